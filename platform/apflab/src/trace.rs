//! `apflab run --trace FILE`: the run as a Chrome trace-event JSON file,
//! which Perfetto's UI (ui.perfetto.dev) and `chrome://tracing` open. One
//! track per vCPU with its synchronous stalls on far memory and its halts in
//! WFI (emu; the gaps between are the vCPU running), and one async
//! slice per async PF token on the vCPU that took the fault, from the fault
//! to its consumption (or its drop), with the "not present", request, fetch
//! done and pushed events of its life as instants inside it. Each step of a
//! token's life is also a short slice on its vCPU's track ("token" steps),
//! and one flow per token joins them in order (fault → not present →
//! request → fetch done → ready → consumed), so the UI draws arrows from the
//! fault to the wake-up.
//!
//! Times are the backend's clock (virtual on emu), in µs as the format
//! wants.

use apflab_apf::{Event, Stall, TokenEvent};
use apflab_vmm::Halt;
use serde_json::{Value, json};

/// The process id every track belongs to.
const PID: u32 = 1;

/// Length of the slice marking one step of a token's life, µs: long enough
/// for a flow to bind to, short against any fetch.
const STEP_US: f64 = 0.05;

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// The trace of a run on `vcpus` vCPUs with its token `events`, `stalls`
/// and `halts`.
pub fn chrome_trace(vcpus: u32, events: &[Event], stalls: &[Stall], halts: &[Halt]) -> Value {
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
    for h in halts {
        out.push(json!({
            "ph": "X", "pid": PID, "tid": h.vcpu, "cat": "halt",
            "name": "halted (WFI)",
            "ts": us(h.start_ns), "dur": us(h.end_ns.saturating_sub(h.start_ns))
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
    // A flow per token: start at its first step, steps, finish at its last.
    let mut lives: std::collections::BTreeMap<u64, Vec<&Event>> = Default::default();
    for e in events {
        lives.entry(e.token.0).or_default().push(e);
    }
    for (token, life) in lives {
        let last = life.len() - 1;
        for (i, e) in life.into_iter().enumerate() {
            let (tid, ts) = (e.token.vcpu(), us(e.t));
            out.push(json!({
                "ph": "X", "pid": PID, "tid": tid, "cat": "token-step",
                "name": e.kind.name(), "ts": ts, "dur": STEP_US,
                "args": { "token": format!("{token:#x}") }
            }));
            let ph = match i {
                0 => "s",
                i if i == last => "f",
                _ => "t",
            };
            out.push(json!({
                "ph": ph, "pid": PID, "tid": tid, "cat": "token-flow",
                "id": format!("{token:#x}"), "name": "token", "ts": ts, "bp": "e"
            }));
        }
    }
    json!({ "traceEvents": out, "displayTimeUnit": "ns" })
}
