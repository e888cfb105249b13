//! The guest's timeline log (`apflab.trace=on`, set by `apflab run
//! --trace`): what the VMM cannot see for itself, namely which task each
//! CPU runs, what each task waits for, and when a CPU is inside one of the
//! kernel's exception handlers.
//!
//! Each CPU appends [`TraceRecord`]s to a buffer of its own and hands the
//! buffer to the host with [`crate::hypercall::FN_TRACE`] whenever the CPU
//! goes idle, when a return to EL0 finds it half full, and at the end of
//! the run, so the log costs at most one exit per idle period or per half
//! [`TRACE_BATCH`] records, and none when tracing is off. Records are in
//! the CPU's program order; their times are the guest's counter.

/// Records a CPU buffers before it hands them over.
pub const TRACE_BATCH: usize = 128;

/// [`TraceRecord::task`] of a CPU's idle loop.
pub const IDLE_TASK: u32 = u32::MAX;

/// What a [`TraceRecord`] says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceKind {
    /// `task` may run and waits in its CPU's run queue.
    Runnable,
    /// The CPU switched to `task` (or to its idle loop, [`IDLE_TASK`]).
    Switch,
    /// `task` sleeps until `arg`, a counter value.
    BlockedUntil,
    /// `task` sleeps until key `arg` is woken: an async PF token with
    /// [`BLOCK_KEY_TOKEN`] set, else another event (a `kv` request).
    BlockedOnKey,
    /// `task` ended.
    Exited,
    /// The CPU entered an exception handler doing what `arg` says
    /// ([`Handler`]), on behalf of `task`.
    HandlerEnter,
    /// The CPU left its innermost handler.
    HandlerExit,
}

/// What an exception handler is doing ([`TraceKind::HandlerEnter`]'s arg).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handler {
    /// An interrupt (every pending INTID).
    Irq,
    /// A system call.
    Syscall,
    /// An async PF "not present" notification.
    NotPresent,
    /// An async PF "page ready" notification (exception or interrupt).
    PageReady,
    /// An SDEI event handler.
    Sdei,
}

/// The bit of a scheduler wait key (and so of [`TraceKind::BlockedOnKey`]'s
/// arg) that says its other bits are an async PF token: tokens never use
/// the top bit, and the kernel's other keys are ASCII tags, which do not
/// either.
pub const BLOCK_KEY_TOKEN: u64 = 1 << 63;

impl TraceKind {
    const ALL: [TraceKind; 7] = [
        TraceKind::Runnable,
        TraceKind::Switch,
        TraceKind::BlockedUntil,
        TraceKind::BlockedOnKey,
        TraceKind::Exited,
        TraceKind::HandlerEnter,
        TraceKind::HandlerExit,
    ];

    /// Its code in [`TraceRecord::kind`] (never 0, so a zeroed record is
    /// no record).
    pub const fn code(self) -> u32 {
        self as u32 + 1
    }

    /// The kind whose code is `code`.
    pub fn from_code(code: u32) -> Option<Self> {
        Self::ALL.get(code.checked_sub(1)? as usize).copied()
    }
}

impl Handler {
    const ALL: [Handler; 5] = [
        Handler::Irq,
        Handler::Syscall,
        Handler::NotPresent,
        Handler::PageReady,
        Handler::Sdei,
    ];

    /// Its code in [`TraceRecord::arg`].
    pub const fn code(self) -> u64 {
        self as u64
    }

    /// The handler whose code is `code`.
    pub fn from_code(code: u64) -> Option<Self> {
        Self::ALL.get(usize::try_from(code).ok()?).copied()
    }

    /// Its name on a timeline.
    pub const fn name(self) -> &'static str {
        match self {
            Handler::Irq => "interrupt",
            Handler::Syscall => "system call",
            Handler::NotPresent => "not present",
            Handler::PageReady => "page ready",
            Handler::Sdei => "SDEI event",
        }
    }
}

/// One entry of the log, as the guest writes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TraceRecord {
    /// The guest's counter (CNTVCT_EL0) when it happened.
    pub ticks: u64,
    /// [`TraceKind::code`].
    pub kind: u32,
    /// The task concerned ([`IDLE_TASK`] for the idle loop).
    pub task: u32,
    /// Per kind: a deadline, a key, a [`Handler`] code; else 0.
    pub arg: u64,
}

impl TraceRecord {
    /// Size in bytes in a buffer handed to the host.
    pub const SIZE: usize = core::mem::size_of::<TraceRecord>();

    /// A record of `kind` for `task` at counter value `ticks`.
    pub const fn new(ticks: u64, kind: TraceKind, task: u32, arg: u64) -> Self {
        TraceRecord {
            ticks,
            kind: kind.code(),
            task,
            arg,
        }
    }

    /// Reads a record from its little-endian bytes.
    pub fn from_bytes(b: &[u8; Self::SIZE]) -> Self {
        let word = |at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let half = |at: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&b[at..at + 4]);
            u32::from_le_bytes(w)
        };
        TraceRecord {
            ticks: word(0),
            kind: half(8),
            task: half(12),
            arg: word(16),
        }
    }
}

const _: () = assert!(TraceRecord::SIZE == 24);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_zero_is_no_kind() {
        for k in TraceKind::ALL {
            assert_eq!(TraceKind::from_code(k.code()), Some(k));
        }
        assert_eq!(TraceKind::from_code(0), None);
        assert_eq!(TraceKind::from_code(8), None);
        for h in Handler::ALL {
            assert_eq!(Handler::from_code(h.code()), Some(h));
        }
        assert_eq!(Handler::from_code(5), None);
    }

    #[test]
    fn a_record_reads_back_from_its_bytes() {
        let r = TraceRecord::new(7, TraceKind::BlockedOnKey, 3, BLOCK_KEY_TOKEN | 0x1000);
        let mut b = [0u8; TraceRecord::SIZE];
        b[0..8].copy_from_slice(&r.ticks.to_le_bytes());
        b[8..12].copy_from_slice(&r.kind.to_le_bytes());
        b[12..16].copy_from_slice(&r.task.to_le_bytes());
        b[16..24].copy_from_slice(&r.arg.to_le_bytes());
        assert_eq!(TraceRecord::from_bytes(&b), r);
    }
}
