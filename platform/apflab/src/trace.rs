//! `apflab run --trace FILE`: the run as a Chrome trace-event JSON file,
//! which Perfetto's UI (ui.perfetto.dev) and `chrome://tracing` open. One
//! track per vCPU with its synchronous stalls on far memory, and one async
//! slice per async PF token on the vCPU that took the fault, from the fault
//! to its consumption (or its drop), with the "not present", request, fetch
//! done and pushed events of its life as instants inside it.
//!
//! Times are the backend's clock (virtual on emu), in µs as the format
//! wants.

use apflab_apf::{Event, Stall, TokenEvent};
use serde_json::{Value, json};

/// The process id every track belongs to.
const PID: u32 = 1;

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// The trace of a run on `vcpus` vCPUs with its token `events` and
/// `stalls`.
pub fn chrome_trace(vcpus: u32, events: &[Event], stalls: &[Stall]) -> Value {
    let mut out = vec![json!({
        "ph": "M", "pid": PID, "name": "process_name", "args": { "name": "apflab guest" }
    })];
    for v in 0..vcpus {
        out.push(json!({
            "ph": "M", "pid": PID, "tid": v, "name": "thread_name",
            "args": { "name": format!("vCPU {v}") }
        }));
    }
    for s in stalls {
        out.push(json!({
            "ph": "X", "pid": PID, "tid": s.vcpu, "cat": "stall",
            "name": "stalled on far memory",
            "ts": us(s.start), "dur": us(s.end.saturating_sub(s.start)),
            "args": { "page": format!("{:#x}", s.page.0) }
        }));
    }
    for e in events {
        let ph = match e.kind {
            TokenEvent::Fault => "b",
            TokenEvent::Consumed | TokenEvent::Dropped => "e",
            _ => "n",
        };
        let name = match ph {
            "n" => e.kind.name().to_owned(),
            _ => format!("token {:#x}", e.token.0),
        };
        out.push(json!({
            "ph": ph, "pid": PID, "tid": e.token.vcpu(), "cat": "token",
            "id": format!("{:#x}", e.token.0), "name": name, "ts": us(e.t),
            "args": { "event": e.kind.name() }
        }));
    }
    json!({ "traceEvents": out, "displayTimeUnit": "ns" })
}
