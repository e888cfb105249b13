//! `apflab run --trace FILE`: the run as a Chrome trace-event JSON file,
//! which Perfetto's UI (ui.perfetto.dev) and `chrome://tracing` open.
//!
//! Process "apflab vCPUs" has a track per vCPU: which task it runs (or
//! its idle loop), the guest's exception handlers it is in (interrupt,
//! system call, "not present", "page ready", SDEI event), its synchronous
//! stalls on far memory and its halts in WFI. Process "apflab tasks" has a
//! track per guest task: running, runnable, sleeping, or blocked on an
//! async PF token. Each async PF token has an async slice on the vCPU that
//! took the fault, from the fault to its consumption (or its drop), with
//! the steps of its life as instants inside it; each step is also a short
//! slice on its vCPU's track ("token" steps), and one flow per token joins
//! them in order, fault → not present → request → fetch done → ready →
//! consumed, and on to the task's wake-up on its track, so the UI draws
//! arrows from the fault to the wake.
//!
//! The vCPU's tasks and handlers and the task tracks come from the guest's
//! own log ([`apflab_abi::trace`]), kept on emu only, where the guest's
//! counter is the virtual clock the VMM's events are on. Times are in µs
//! as the format wants.

use std::collections::BTreeMap;

use apflab_abi::trace::{BLOCK_KEY_TOKEN, Handler, IDLE_TASK, TraceKind, TraceRecord};
use apflab_apf::{Event, Stall, TokenEvent};
use apflab_vmm::devices::timer::ns_at;
use apflab_vmm::{GuestTimeline, Halt};
use serde_json::{Value, json};

/// The process of the vCPU tracks.
const PID: u32 = 1;
/// The process of the guest's task tracks.
const TASKS_PID: u32 = 2;

/// Length of the slice marking one step of a token's life, µs: long enough
/// for a flow to bind to, short against any fetch.
const STEP_US: f64 = 0.05;

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

/// What a trace is drawn from.
pub struct TraceInputs<'a> {
    /// vCPUs of the run.
    pub vcpus: u32,
    /// The fault engine's token events.
    pub events: &'a [Event],
    /// Synchronous stalls.
    pub stalls: &'a [Stall],
    /// WFI halts.
    pub halts: &'a [Halt],
    /// The guest's timeline log.
    pub timeline: &'a GuestTimeline,
}

/// The trace of a run.
pub fn chrome_trace(inputs: &TraceInputs) -> Value {
    let TraceInputs {
        vcpus,
        events,
        stalls,
        halts,
        timeline,
    } = *inputs;
    let mut out = vec![
        json!({
            "ph": "M", "pid": PID, "name": "process_name", "args": { "name": "apflab vCPUs" }
        }),
        json!({
            "ph": "M", "pid": TASKS_PID, "name": "process_name", "args": { "name": "apflab tasks" }
        }),
    ];
    if timeline.dropped > 0 {
        out.push(json!({
            "ph": "M", "pid": TASKS_PID, "name": "process_labels",
            "args": { "labels": format!("{} guest log records not kept", timeline.dropped) }
        }));
    }
    let end_ns = events
        .iter()
        .map(|e| e.t)
        .chain(stalls.iter().map(|s| s.end))
        .chain(halts.iter().map(|h| h.end_ns))
        .chain(timeline.records.iter().map(|(_, r)| ns_at(r.ticks)))
        .max()
        .unwrap_or(0);
    vcpu_tasks_and_handlers(&mut out, timeline, end_ns);
    let wakes = task_tracks(&mut out, timeline, end_ns);
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
    // A flow per token: start at its first step, steps, on to the wake-up
    // of the task that slept on it, finish at the last.
    let mut lives: BTreeMap<u64, Vec<Step>> = BTreeMap::new();
    for e in events {
        lives.entry(e.token.0).or_default().push(Step {
            pid: PID,
            tid: e.token.vcpu(),
            ns: e.t,
            name: e.kind.name(),
        });
    }
    for (token, wake) in wakes {
        if let Some(life) = lives.get_mut(&token) {
            life.push(wake);
            life.sort_by_key(|s| s.ns);
        }
    }
    for (token, life) in lives {
        let last = life.len() - 1;
        for (i, step) in life.into_iter().enumerate() {
            let ts = us(step.ns);
            out.push(json!({
                "ph": "X", "pid": step.pid, "tid": step.tid, "cat": "token-step",
                "name": step.name, "ts": ts, "dur": STEP_US,
                "args": { "token": format!("{token:#x}") }
            }));
            let ph = match i {
                0 => "s",
                i if i == last => "f",
                _ => "t",
            };
            out.push(json!({
                "ph": ph, "pid": step.pid, "tid": step.tid, "cat": "token-flow",
                "id": format!("{token:#x}"), "name": "token", "ts": ts, "bp": "e"
            }));
        }
    }
    json!({ "traceEvents": out, "displayTimeUnit": "ns" })
}

/// One step of a token's flow, on a track.
struct Step {
    pid: u32,
    tid: u32,
    ns: u64,
    name: &'static str,
}

/// A complete slice on a track.
fn slice(pid: u32, tid: u32, cat: &str, name: String, start_ns: u64, end_ns: u64) -> Value {
    json!({
        "ph": "X", "pid": pid, "tid": tid, "cat": cat, "name": name,
        "ts": us(start_ns), "dur": us(end_ns.saturating_sub(start_ns))
    })
}

fn context_name(task: u32) -> String {
    match task {
        IDLE_TASK => "idle".to_owned(),
        t => format!("task {t}"),
    }
}

/// Each vCPU's runs of a task (or of its idle loop) and its stays in
/// exception handlers. A handler that switches tasks (a "not present" that
/// parks its task) is left at the switch and entered again when its task
/// comes back, so the slices on a vCPU nest as the format wants.
fn vcpu_tasks_and_handlers(out: &mut Vec<Value>, timeline: &GuestTimeline, end_ns: u64) {
    let mut cpus: BTreeMap<u32, Cpu> = BTreeMap::new();
    for &(vcpu, r) in &timeline.records {
        let t = ns_at(r.ticks);
        let c = cpus.entry(vcpu).or_insert(Cpu {
            task: IDLE_TASK,
            since: None,
            handlers: BTreeMap::new(),
        });
        match TraceKind::from_code(r.kind) {
            Some(TraceKind::Switch) => {
                c.leave(out, vcpu, t);
                c.task = r.task;
                c.since = Some(t);
                for (_, entered) in c.handlers.entry(c.task).or_default().iter_mut() {
                    *entered = Some(t);
                }
            }
            Some(TraceKind::HandlerEnter) => {
                if let Some(h) = Handler::from_code(r.arg) {
                    c.handlers.entry(c.task).or_default().push((h, Some(t)));
                }
            }
            Some(TraceKind::HandlerExit) => {
                if let Some((h, Some(s))) = c.handlers.entry(c.task).or_default().pop() {
                    out.push(slice(PID, vcpu, "handler", h.name().to_owned(), s, t));
                }
            }
            _ => {}
        }
    }
    for (vcpu, mut c) in cpus {
        c.leave(out, vcpu, end_ns);
    }
}

/// What one vCPU is doing, as its log is read.
struct Cpu {
    /// The task it runs, or [`IDLE_TASK`].
    task: u32,
    /// Since when it runs it.
    since: Option<u64>,
    /// Per task (and the idle loop): its open handlers, innermost last,
    /// each with the time it was (re-)entered while its task runs.
    handlers: BTreeMap<u32, Vec<(Handler, Option<u64>)>>,
}

impl Cpu {
    /// Ends, at `t`, the slices of the task the vCPU runs and of the
    /// handlers open in it (which stay open, to be entered again when the
    /// task comes back).
    fn leave(&mut self, out: &mut Vec<Value>, vcpu: u32, t: u64) {
        if let Some(since) = self.since.take() {
            let name = context_name(self.task);
            out.push(slice(PID, vcpu, "vcpu-task", name, since, t));
        }
        for (h, entered) in self.handlers.entry(self.task).or_default().iter_mut() {
            if let Some(s) = entered.take() {
                out.push(slice(PID, vcpu, "handler", h.name().to_owned(), s, t));
            }
        }
    }
}

/// A task's state on its track, with its name there.
fn task_state(vcpu: u32, r: &TraceRecord) -> Option<String> {
    Some(match TraceKind::from_code(r.kind)? {
        TraceKind::Runnable => "runnable".to_owned(),
        TraceKind::Switch => format!("running on vCPU {vcpu}"),
        TraceKind::BlockedUntil => "sleeping".to_owned(),
        TraceKind::BlockedOnKey if r.arg & BLOCK_KEY_TOKEN != 0 => {
            format!("blocked on token {:#x}", r.arg & !BLOCK_KEY_TOKEN)
        }
        TraceKind::BlockedOnKey => "waiting for an event".to_owned(),
        TraceKind::Exited => "exited".to_owned(),
        TraceKind::HandlerEnter | TraceKind::HandlerExit => return None,
    })
}

/// A track per guest task with its states; returns, per token a task was
/// blocked on, the step of its wake-up (the task made runnable again).
fn task_tracks(out: &mut Vec<Value>, timeline: &GuestTimeline, end_ns: u64) -> Vec<(u64, Step)> {
    let mut records: Vec<&(u32, TraceRecord)> = timeline
        .records
        .iter()
        .filter(|(_, r)| r.task != IDLE_TASK)
        .collect();
    // Stable: one vCPU's records at one counter value stay in order.
    records.sort_by_key(|(_, r)| r.ticks);
    let mut state: BTreeMap<u32, (String, u64, Option<u64>)> = BTreeMap::new();
    let mut wakes = Vec::new();
    for &&(vcpu, r) in &records {
        let Some(name) = task_state(vcpu, &r) else {
            continue;
        };
        let t = ns_at(r.ticks);
        if !state.contains_key(&r.task) {
            out.push(json!({
                "ph": "M", "pid": TASKS_PID, "tid": r.task, "name": "thread_name",
                "args": { "name": format!("task {}", r.task) }
            }));
        }
        let token = (r.kind == TraceKind::BlockedOnKey.code() && r.arg & BLOCK_KEY_TOKEN != 0)
            .then_some(r.arg & !BLOCK_KEY_TOKEN);
        if let Some((prev, since, blocked_on)) = state.insert(r.task, (name, t, token)) {
            out.push(slice(TASKS_PID, r.task, "task", prev, since, t));
            if let Some(token) = blocked_on {
                wakes.push((
                    token,
                    Step {
                        pid: TASKS_PID,
                        tid: r.task,
                        ns: t,
                        name: "wake",
                    },
                ));
            }
        }
    }
    for (task, (name, since, _)) in state {
        if name != "exited" {
            out.push(slice(TASKS_PID, task, "task", name, since, end_ns));
        }
    }
    wakes
}
