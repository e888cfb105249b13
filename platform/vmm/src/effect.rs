//! What a hypercall the machine answers asks of the vCPU loop ([`Effect`]),
//! and how each of the machine's services answers one ([`Answer`]). A
//! module of its own so that the machine and its services (`psci.rs`,
//! `guest_calls.rs`) each depend on it and not on one another.

use apflab_abi::hypercall as hc;
use serde::{Deserialize, Serialize};

/// Something a hypercall asks of the vCPU loop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// PSCI CPU_ON succeeded: start `target` at `entry` with x0 =
    /// `context_id`.
    CpuOn {
        /// vCPU index.
        target: u32,
        /// Entry point (physical; the MMU of a fresh CPU is off).
        entry: u64,
        /// Value for x0.
        context_id: u64,
    },
    /// PSCI CPU_OFF from this vCPU.
    CpuOff {
        /// vCPU index.
        vcpu: u32,
    },
    /// PSCI CPU_SUSPEND from this vCPU: it idles as in WFI.
    CpuSuspend {
        /// vCPU index.
        vcpu: u32,
    },
    /// PSCI SYSTEM_OFF.
    SystemOff,
    /// PSCI SYSTEM_RESET.
    SystemReset,
    /// apflab PANIC with its message.
    Panic(String),
}

/// What a service of the machine (the PSCI firmware, apflab's own calls)
/// returns to the caller of a hypercall, and what it asks of the vCPU
/// loop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    /// x0..x3 for the caller.
    pub regs: [u64; 4],
    /// Something for the vCPU loop to carry out.
    pub effect: Option<Effect>,
}

impl Answer {
    /// x0..x3 and nothing else.
    pub(crate) fn regs(regs: [u64; 4]) -> Self {
        Answer { regs, effect: None }
    }

    /// x0 (an SMCCC or PSCI status, or a value) and nothing else.
    pub(crate) fn returning(x0: i64) -> Self {
        Answer::regs([x0 as u64, 0, 0, 0])
    }

    /// Success, with `effect` for the vCPU loop.
    pub(crate) fn success_with(effect: Effect) -> Self {
        Answer {
            effect: Some(effect),
            ..Answer::returning(hc::SMCCC_SUCCESS)
        }
    }
}
