//! What a finished run hands back to the caller.

use std::collections::BTreeMap;
use std::time::Duration;

use apflab_abi::report::GuestReport;
use apflab_abi::trace::TraceRecord;

use apflab_hypervisor::{CrashReason, HookFailure, PageServerError};

use crate::effect::Effect;
use crate::watchdog::HangDiagnosis;

/// How the guest's run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GuestExit {
    /// PSCI SYSTEM_OFF.
    PowerOff,
    /// PSCI SYSTEM_RESET.
    Reset,
    /// The guest kernel panicked (`PANIC` hypercall) with this message.
    Panic(String),
    /// The guest hit a fault the VMM cannot resolve (an exception with no
    /// vector table to take it, a translation setup the VMM does not
    /// implement...), or the fault engine ended the run.
    Crash(GuestCrash),
    /// `max_virtual_ns` passed before the guest powered off.
    Timeout,
    /// `wall_timeout` of host wall-clock time passed before the guest
    /// powered off.
    WallTimeout,
    /// The watchdog stopped the run: the guest showed no sign of life for
    /// `watchdog_ns`.
    Hang(HangDiagnosis),
}

/// Why a run ended as a crash ([`GuestExit::Crash`]), with what the
/// backend, the fault engine or the page server said as the cause.
#[derive(Clone, Debug, thiserror::Error)]
pub enum GuestCrash {
    /// The backend stopped vCPU `vcpu` at `pc` (touching `addr`, when
    /// known) for good.
    #[error("vCPU {vcpu}: {reason} at pc {pc:#x}{}", at_address(.addr))]
    Vcpu {
        /// The vCPU.
        vcpu: u32,
        /// PC of the instruction.
        pc: u64,
        /// Faulting address, when known.
        addr: Option<u64>,
        /// Why.
        #[source]
        reason: CrashReason,
    },
    /// The fault engine could not go on with vCPU `vcpu` ([`apflab_hypervisor::Action::Fail`]).
    #[error("vCPU {vcpu}: {failure}")]
    Hook {
        /// The vCPU.
        vcpu: u32,
        /// Why.
        #[source]
        failure: HookFailure,
    },
    /// The fault engine went away while a hypercall waited for its answer.
    #[error("the fault engine stopped before answering a hypercall")]
    EngineGone,
    /// The fault engine acted on a vCPU the VM does not have.
    #[error("the fault engine acted on vCPU {0}, which this VM does not have")]
    NoSuchVcpu(u32),
    /// The in-kernel page server failed (kvm's `fault_path = "kernel"`).
    #[error("page server: {0}")]
    PageServer(#[source] PageServerError),
    /// Every vCPU thread ended without saying why (kvm).
    #[error("every vCPU thread stopped")]
    VcpuThreadsGone,
    /// A PSCI call came through apflab's doorbell on kvm, where PSCI is
    /// the in-kernel firmware's.
    #[error(
        "vCPU {vcpu}: PSCI call {call:?} through the apflab conduit; on kvm PSCI is HVC to the \
         in-kernel firmware"
    )]
    PsciThroughDoorbell {
        /// The vCPU.
        vcpu: u32,
        /// The call.
        call: Effect,
    },
}

/// `, address A` for a crash whose faulting address is known.
fn at_address(addr: &Option<u64>) -> String {
    addr.map(|a| format!(", address {a:#x}"))
        .unwrap_or_default()
}

/// Two crashes are equal when they are of the same kind and say the same
/// thing (their causes are compared by what they say, as a run reports
/// them).
impl PartialEq for GuestCrash {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

impl Eq for GuestCrash {}

impl GuestExit {
    /// Whether the run counts as a success.
    pub fn is_success(&self) -> bool {
        matches!(self, GuestExit::PowerOff)
    }
}

/// Counters the VMM keeps about one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VmMetrics {
    /// Exits by reason (`mmio`, `hypercall`, `psci`, `sysreg`, `wfi`,
    /// `svc`, `irq`, `not_resident`, ...).
    pub exits: BTreeMap<String, u64>,
    /// Guest instructions executed (all vCPUs).
    pub instructions: u64,
    /// Virtual time at the end of the run (emu), ns.
    pub virtual_time_ns: u64,
    /// Per vCPU: virtual ns spent halted in WFI. (Time stalled or parked on
    /// not-resident pages is the fault engine's to count.)
    pub halted_ns: Vec<u64>,
    /// The WFI halts themselves, in the order they ended (emu only; the
    /// first [`MAX_RECORDED_HALTS`]), for timelines.
    pub halts: Vec<Halt>,
    /// Halts not kept in [`VmMetrics::halts`] because it was full.
    pub halts_dropped: u64,
    /// Interrupts injected, by INTID.
    pub interrupts: BTreeMap<u32, u64>,
}

/// Most halts a run keeps ([`VmMetrics::halts`]): 2.4 MB.
pub const MAX_RECORDED_HALTS: usize = 100_000;

/// One stretch of virtual time a vCPU spent halted in WFI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Halt {
    /// The vCPU.
    pub vcpu: u32,
    /// When it halted, ns.
    pub start_ns: u64,
    /// When it woke, ns.
    pub end_ns: u64,
}

/// Most timeline records a run keeps ([`GuestTimeline::records`]): 28 MB.
pub const MAX_TIMELINE_RECORDS: usize = 1_000_000;

/// The guest's timeline log (`apflab.trace=on`, see
/// [`apflab_abi::trace`]) as the VMM received it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GuestTimeline {
    /// (vCPU, record): each vCPU's records in its program order.
    #[serde(with = "crate::snapshot::abi_serde::timeline")]
    pub records: Vec<(u32, TraceRecord)>,
    /// Records the guest could not keep, and those past
    /// [`MAX_TIMELINE_RECORDS`].
    pub dropped: u64,
}

/// Everything a run produced.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    /// How it ended.
    pub exit: GuestExit,
    /// Everything the guest wrote to its console.
    pub console: String,
    /// The guest's report (`REPORT` hypercall), if it sent one.
    pub report: Option<GuestReport>,
    /// Per-task completion (virtual ns) from `TASK_DONE`, by task id.
    pub task_done_ns: BTreeMap<u64, u64>,
    /// VMM counters.
    pub metrics: VmMetrics,
    /// The guest's timeline log (empty unless it kept one).
    pub timeline: GuestTimeline,
    /// Host wall-clock time of the run (not deterministic).
    pub wall_time: Duration,
}
