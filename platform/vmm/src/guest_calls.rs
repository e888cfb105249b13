//! apflab's own hypercalls between the guest and the VMM: the guest's
//! report, its panic message, its tasks' completion times and its timeline,
//! and, the other way, the workload's words handed over after a boot point.
//!
//! Everything read here comes from guest memory at guest-given addresses
//! and lengths: a bad one gets an SMCCC error code, never a panic, and
//! nothing the guest sends can grow the VMM's memory without bound.

use std::collections::BTreeMap;

use apflab_abi::boot_point;
use apflab_abi::hypercall as hc;
use apflab_abi::report::{GuestReport, MAX_REPORTED_TASKS};
use apflab_abi::trace::{TRACE_BATCH, TraceKind, TraceRecord};
use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::effect::{Answer, Effect};
use crate::outcome::{GuestTimeline, MAX_TIMELINE_RECORDS};

/// What the guest handed over so far, and what the VMM hands it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct GuestCalls {
    #[serde(with = "crate::snapshot::abi_serde::report")]
    report: Option<GuestReport>,
    task_done_ns: BTreeMap<u64, u64>,
    timeline: GuestTimeline,
    /// What [`boot_point::FN_WORKLOAD_ARGS`] hands over: this run's, not
    /// saved in a snapshot.
    #[serde(skip)]
    workload_args: String,
}

impl GuestCalls {
    /// Answers `function` from `vcpu` at `now_ns`, reading what it names
    /// from `memory`. `None`: not one of these calls.
    pub fn call(
        &mut self,
        vcpu: u32,
        function: u32,
        args: [u64; 5],
        now_ns: u64,
        memory: &GuestMemoryMmap,
    ) -> Option<Answer> {
        let answer = match function {
            hc::FN_REPORT => Answer::returning(self.receive_report(args, memory)),
            hc::FN_PANIC => Answer::success_with(Effect::Panic(panic_message(args, memory))),
            hc::FN_TASK_DONE => {
                let id = args[0];
                // A task the guest cannot have would be a bogus result (and
                // the bound keeps the map small).
                if id >= MAX_REPORTED_TASKS as u64 {
                    return Some(Answer::returning(hc::SMCCC_INVALID_PARAMETERS));
                }
                self.task_done_ns.insert(id, now_ns);
                Answer::returning(hc::SMCCC_SUCCESS)
            }
            hc::FN_TRACE => Answer::returning(self.receive_timeline(vcpu, args, memory)),
            boot_point::FN_WORKLOAD_ARGS => self.workload_args_at(args[0]),
            _ => return None,
        };
        Some(answer)
    }

    /// Sets the words [`boot_point::FN_WORKLOAD_ARGS`] hands over.
    pub fn set_workload_args(&mut self, words: &str) {
        words.clone_into(&mut self.workload_args);
    }

    /// The state `saved` (of a snapshot), with this run's workload words.
    pub fn restore(&mut self, saved: GuestCalls) {
        let workload_args = std::mem::take(&mut self.workload_args);
        *self = GuestCalls {
            workload_args,
            ..saved
        };
    }

    /// The report the guest sent by `REPORT`, if a valid one.
    pub fn report(&self) -> Option<GuestReport> {
        self.report
    }

    /// Task completion times (virtual ns) by task id.
    pub fn task_done_ns(&self) -> &BTreeMap<u64, u64> {
        &self.task_done_ns
    }

    /// Takes the timeline received so far.
    pub fn take_timeline(&mut self) -> GuestTimeline {
        std::mem::take(&mut self.timeline)
    }

    /// `REPORT(ipa, len)`: keeps the report if `len` is its size and the
    /// bytes at `ipa` are a valid one.
    fn receive_report(&mut self, args: [u64; 5], memory: &GuestMemoryMmap) -> i64 {
        if args[1] != GuestReport::SIZE as u64 {
            return hc::SMCCC_INVALID_PARAMETERS;
        }
        // On the heap: the report is 30 KiB.
        let mut buf = vec![0u8; GuestReport::SIZE];
        let read = memory.read_slice(&mut buf, GuestAddress(args[0]));
        match read.ok().and_then(|()| GuestReport::from_bytes(&buf)) {
            Some(r) => {
                self.report = Some(r);
                hc::SMCCC_SUCCESS
            }
            None => hc::SMCCC_INVALID_PARAMETERS,
        }
    }

    /// `TRACE(records_ipa, count, dropped)` from `vcpu`: keeps the records
    /// (up to [`MAX_TIMELINE_RECORDS`] in all, counting the rest as
    /// dropped). A batch that is too long, outside RAM or holds a record
    /// of no known kind is refused whole.
    fn receive_timeline(&mut self, vcpu: u32, args: [u64; 5], memory: &GuestMemoryMmap) -> i64 {
        let [at, count, dropped, ..] = args;
        if count > TRACE_BATCH as u64 {
            return hc::SMCCC_INVALID_PARAMETERS;
        }
        let mut buf = vec![0u8; count as usize * TraceRecord::SIZE];
        if memory.read_slice(&mut buf, GuestAddress(at)).is_err() {
            return hc::SMCCC_INVALID_PARAMETERS;
        }
        let records: Option<Vec<TraceRecord>> = buf
            .as_chunks::<{ TraceRecord::SIZE }>()
            .0
            .iter()
            .map(TraceRecord::from_bytes)
            .map(|r| TraceKind::from_code(r.kind).is_some().then_some(r))
            .collect();
        let Some(records) = records else {
            return hc::SMCCC_INVALID_PARAMETERS;
        };
        let timeline = &mut self.timeline;
        let room = MAX_TIMELINE_RECORDS.saturating_sub(timeline.records.len());
        let kept = records.len().min(room);
        timeline.dropped = timeline
            .dropped
            .saturating_add(dropped)
            .saturating_add((records.len() - kept) as u64);
        timeline
            .records
            .extend(records.into_iter().take(kept).map(|r| (vcpu, r)));
        hc::SMCCC_SUCCESS
    }

    /// `WORKLOAD_ARGS(at)`: the words' length and their 8 bytes from `at`.
    fn workload_args_at(&self, at: u64) -> Answer {
        let words = self.workload_args.as_bytes();
        match usize::try_from(at).ok().filter(|&at| at <= words.len()) {
            Some(at) => {
                let mut chunk = [0u8; 8];
                let part = &words[at..words.len().min(at + 8)];
                chunk[..part.len()].copy_from_slice(part);
                Answer::regs([words.len() as u64, u64::from_le_bytes(chunk), 0, 0])
            }
            None => Answer::returning(hc::SMCCC_INVALID_PARAMETERS),
        }
    }
}

/// `PANIC(ipa, len)`'s message (at most [`hc::PANIC_MSG_MAX`] bytes), or
/// where it should have been when that is outside guest RAM.
fn panic_message(args: [u64; 5], memory: &GuestMemoryMmap) -> String {
    let len = args[1].min(hc::PANIC_MSG_MAX) as usize;
    let mut buf = vec![0u8; len];
    match memory.read_slice(&mut buf, GuestAddress(args[0])) {
        Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
        Err(_) => format!(
            "(panic message at {:#x}, {} bytes, is outside guest RAM)",
            args[0], args[1]
        ),
    }
}
