//! Why a backend stopped a vCPU for good ([`crate::VmExit::Crash`]): one
//! variant per situation the backends meet, so a run loop, a test or a
//! fuzz target tells them apart by kind, and the engine's or host kernel's
//! own error stays reachable as the cause.

use std::error::Error;
use std::sync::Arc;

use crate::arch::stage1::UnsupportedSetup;

/// The CPU engine's (emu) or host kernel's (kvm) error behind a crash,
/// shared so that a [`crate::VmExit`] stays cheap to clone.
pub type CrashSource = Arc<dyn Error + Send + Sync>;

/// Why the machine cannot continue from where the guest is.
#[derive(Clone, Debug, thiserror::Error)]
pub enum CrashReason {
    /// A synchronous exception was taken to a vector that holds no handler
    /// (VBAR_EL1 points where there is no vector table), so the CPU takes
    /// an exception there again forever. The syndrome named is the first
    /// exception's: the guest's real problem.
    #[error(
        "synchronous exception (ESR_EL1 {esr:#x}, FAR_EL1 {far:#x}) taken to VBAR_EL1 \
         {vbar:#x} + {offset:#x}, where there is no vector table: the CPU takes exception \
         {again_esr:#x} there again and again"
    )]
    NoVectorTable {
        /// ESR_EL1 of the first exception.
        esr: u64,
        /// FAR_EL1 of the first exception.
        far: u64,
        /// VBAR_EL1.
        vbar: u64,
        /// The vector's offset from VBAR_EL1.
        offset: u64,
        /// The syndrome of the exception the vector itself raises.
        again_esr: u64,
    },
    /// An instruction fetch from device registers whose value is not an
    /// UNDEFINED encoding: QEMU would execute it, the software CPU cannot.
    #[error(
        "instruction fetch from the device registers at {pa:#x}, which read {word:#010x}: \
         QEMU would execute that value as an instruction, which the software CPU cannot do \
         from a device"
    )]
    FetchFromDevice {
        /// Physical address fetched.
        pa: u64,
        /// What the device read there.
        word: u32,
    },
    /// The guest's stage-1 translation uses a setup the VMM's walker does
    /// not implement, so no access can be translated faithfully.
    #[error("translation fault: unsupported stage-1 setup: {0}")]
    UnsupportedTranslation(#[source] UnsupportedSetup),
    /// The MMU registers could not be read from the CPU engine.
    #[error("cannot read the MMU registers: {0}")]
    MmuRegistersUnreadable(#[source] CrashSource),
    /// The CPU engine stopped with an error of its own.
    #[error("CPU stopped with {0}")]
    EngineStopped(#[source] CrashSource),
    /// The CPU engine raised an instruction abort by itself (its TLB fills
    /// are the VMM's, so this is never the guest's translation).
    #[error("instruction abort the engine raised by itself")]
    EngineInstructionAbort,
    /// The CPU engine raised an exception number the backend does not know.
    #[error("unexpected CPU exception {0}")]
    UnexpectedException(u32),
    /// `KVM_RUN` failed with EFAULT and no withheld page explains it.
    #[error("KVM_RUN failed with EFAULT and the fault cannot be located: {0}")]
    FaultNotLocated(#[source] CrashSource),
    /// A KVM system event other than shutdown and reset (a crash, or a
    /// kind newer than this VMM).
    #[error("KVM system event {0} (crash or unknown)")]
    SystemEvent(u32),
    /// An access outside RAM by an instruction whose syndrome does not
    /// describe it (KVM_EXIT_ARM_NISV): no device can be emulated for it.
    #[error(
        "access to {ipa:#x} (outside RAM) by an instruction without a valid syndrome \
         (ESR ISS {esr_iss:#x}); devices need single LDR/STR"
    )]
    AccessWithoutSyndrome {
        /// The IPA accessed.
        ipa: u64,
        /// The ISS bits KVM gave.
        esr_iss: u64,
    },
    /// A `KVM_RUN` exit reason the backend does not handle. kvm-ioctls'
    /// exit borrows the vCPU's run page, so what is kept is its
    /// description.
    #[error("unexpected KVM exit {0}")]
    UnexpectedKvmExit(String),
}

/// Two reasons are equal when they are of the same kind and say the same
/// thing (their causes are compared by what they say, as a crash reports
/// them).
impl PartialEq for CrashReason {
    fn eq(&self, other: &Self) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
            && self.to_string() == other.to_string()
    }
}

impl Eq for CrashReason {}
