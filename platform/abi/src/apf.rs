//! The asynchronous page fault protocol: features, tokens, exception
//! syndromes and the per-vCPU control block.
//!
//! Protocol in one paragraph: the guest registers one [`ControlBlock`] per
//! vCPU with `APF_ENABLE`. When the vCPU touches a page the host does not have
//! and the policy says "async", the host allocates a [`Token`] and delivers
//! *not present* on the faulting instruction, either as a data abort with
//! [`ControlBlock::reason`] = [`REASON_NOT_PRESENT`] (Gavin Shan's RFCv2) or
//! as an exception with the dedicated class [`EC_APF_NOT_PRESENT`] and the
//! token in ESR.ISS (Paolo Bonzini's review). The guest parks the faulting
//! task (or halts, as [`ControlBlock::action`] says) and, in the
//! guest-initiated variant, asks for the page with `APF_PAGE_REQUEST`. When
//! the page is in, the host delivers *page ready* for the token, either as a
//! synchronous exception (reason [`REASON_PAGE_READY`]) or as the PPI
//! [`crate::memory_map::APF_READY_PPI`] with the token in the
//! [`ControlBlock::ready_ring`], acknowledged with `APF_ACK`.

/// Feature bits returned by `FEATURES` and accepted by `APF_ENABLE`.
pub mod features {
    /// "Not present" as a data abort plus [`super::ControlBlock::reason`].
    pub const NOT_PRESENT_DATA_ABORT: u64 = 1 << 0;
    /// "Not present" as an exception with [`super::EC_APF_NOT_PRESENT`].
    pub const NOT_PRESENT_DEDICATED_EC: u64 = 1 << 1;
    /// "Page ready" as an injected synchronous exception.
    pub const READY_EXCEPTION: u64 = 1 << 2;
    /// "Page ready" as the PPI plus `APF_ACK`.
    pub const READY_INTERRUPT: u64 = 1 << 3;
    /// The guest starts the fetch with `APF_PAGE_REQUEST`.
    pub const GUEST_INITIATED: u64 = 1 << 4;
    /// Several ready tokens per interrupt through the ready ring.
    pub const READY_RING: u64 = 1 << 5;
    /// The host accepts async faults while the guest is in kernel mode
    /// (the SEND_ALWAYS analogue); without it such faults are synchronous.
    pub const KERNEL_MODE_ASYNC: u64 = 1 << 6;
    /// Hypercalls through the MMIO doorbell rather than HVC.
    pub const DOORBELL: u64 = 1 << 7;
    /// "Not present" as the SDEI event [`crate::sdei::EVENT_APF`], the
    /// token in the control block (the guest registers and enables the
    /// event on the CPU before it accepts this).
    pub const NOT_PRESENT_SDEI: u64 = 1 << 8;
    /// Every feature this ABI version defines.
    pub const ALL: u64 = (1 << 9) - 1;
}

/// Exception class used for "not present" in the dedicated-EC variant.
///
/// 0x1E is unallocated in the Armv8-A/Armv9-A ESR_ELx.EC encoding, so a guest
/// can never confuse it with an architectural exception. ISS\[24:0\] holds
/// the low 25 bits of the token; the full token is also in the control block.
pub const EC_APF_NOT_PRESENT: u32 = 0x1E;
/// Exception class used for "page ready" delivered as an exception in the
/// dedicated-EC variant: another class the architecture leaves
/// unallocated (0x1D, next to [`EC_APF_NOT_PRESENT`], is FEAT_SME's trap,
/// which Linux dispatches as such).
pub const EC_APF_READY: u32 = 0x0F;
/// Data abort from a lower exception level (EL0).
pub const EC_DATA_ABORT_LOWER: u32 = 0x24;
/// Data abort from the current exception level (EL1).
pub const EC_DATA_ABORT_CURRENT: u32 = 0x25;
/// Instruction abort from a lower exception level.
pub const EC_INSN_ABORT_LOWER: u32 = 0x20;
/// Instruction abort from the current exception level.
pub const EC_INSN_ABORT_CURRENT: u32 = 0x21;
/// Shift of the EC field in ESR_ELx.
pub const ESR_EC_SHIFT: u32 = 26;
/// ESR_ELx.IL: 32-bit instruction.
pub const ESR_IL: u64 = 1 << 25;
/// Data fault status code the host uses for "not present" in the data-abort
/// variant: translation fault, level 3.
pub const DFSC_TRANSLATION_L3: u64 = 0b000111;

/// Builds the ESR value for an exception with class `ec` and syndrome `iss`.
pub const fn esr(ec: u32, iss: u64) -> u64 {
    ((ec as u64) << ESR_EC_SHIFT) | ESR_IL | (iss & 0x1FF_FFFF)
}

/// Exception class of an ESR value.
pub const fn esr_ec(esr: u64) -> u32 {
    ((esr >> ESR_EC_SHIFT) & 0x3f) as u32
}

/// At most this many async faults are outstanding per vCPU; beyond that the
/// host handles the fault synchronously.
pub const MAX_OUTSTANDING: usize = 64;

/// Token that wakes every sleeper (sent on disable and reset).
pub const TOKEN_WAKE_ALL: u64 = !0;

/// An async page fault token: `(id << 12) | vcpu`, unique per vCPU while
/// outstanding; `id` is never 0 so a token is never 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(pub u64);

impl Token {
    /// Bits of the token that hold the vCPU index.
    pub const VCPU_BITS: u32 = 12;

    /// Makes the token for sequence number `id` (non-zero) on `vcpu`.
    pub const fn new(id: u64, vcpu: u32) -> Self {
        Token((id << Self::VCPU_BITS) | (vcpu as u64 & 0xfff))
    }

    /// The vCPU that took the fault.
    pub const fn vcpu(self) -> u32 {
        (self.0 & 0xfff) as u32
    }

    /// The per-vCPU sequence number.
    pub const fn id(self) -> u64 {
        self.0 >> Self::VCPU_BITS
    }

    /// Whether this is the wake-all token.
    pub const fn is_wake_all(self) -> bool {
        self.0 == TOKEN_WAKE_ALL
    }
}

/// [`ControlBlock::reason`]: nothing pending.
pub const REASON_NONE: u32 = 0;
/// [`ControlBlock::reason`]: the abort being taken is "not present" for
/// [`ControlBlock::token`].
pub const REASON_NOT_PRESENT: u32 = 1;
/// [`ControlBlock::reason`]: the exception being taken is "page ready" for
/// [`ControlBlock::token`].
pub const REASON_PAGE_READY: u32 = 2;

/// [`ControlBlock::action`]: park the faulting task and run another.
pub const ACTION_RESCHEDULE: u32 = 0;
/// [`ControlBlock::action`]: idle this vCPU (WFI) until the token is ready.
pub const ACTION_HALT: u32 = 1;
/// Mask of the sleep part of [`ControlBlock::action`] ([`ACTION_RESCHEDULE`]
/// or [`ACTION_HALT`]).
pub const ACTION_SLEEP_MASK: u32 = 0xff;
/// [`ControlBlock::action`] flag: the host has not started the fetch; the
/// guest asks for it with `APF_PAGE_REQUEST` (guest-initiated variant).
pub const ACTION_REQUEST_PAGE: u32 = 1 << 8;

/// [`ControlBlock::guest_state`] bit: the guest can schedule right now
/// (preemption enabled, not in the idle task, not in the exception entry
/// window). The host only delivers "not present" when it is set, unless
/// kernel-mode async is enabled.
pub const GUEST_CAN_RESCHEDULE: u32 = 1 << 0;
/// [`ControlBlock::guest_state`] bit: the idle task is running.
pub const GUEST_IN_IDLE: u32 = 1 << 1;
/// [`ControlBlock::guest_state`] bit: inside the exception entry/exit window
/// where an injected exception would corrupt saved state. For code that
/// can fault there, [`ControlBlock::no_inject_start`] and
/// [`ControlBlock::no_inject_end`] say the same without a store per entry.
pub const GUEST_NO_INJECT: u32 = 1 << 2;

/// Number of slots of the ready ring.
pub const READY_RING_SLOTS: usize = 64;

/// Version of the control block layout and meaning, in
/// [`ControlBlock::version`]. 2: [`ControlBlock::action`] carries
/// [`ACTION_REQUEST_PAGE`] beside the sleep choice. 3: the guest publishes
/// its no-inject window ([`ControlBlock::no_inject_start`]).
pub const CONTROL_BLOCK_VERSION: u32 = 3;

/// The per-vCPU async PF control block, in guest memory, registered with
/// `APF_ENABLE`. 64-byte aligned; fields are written by the side named.
///
/// All fields are little-endian and accessed with single aligned loads and
/// stores of their own width, so each side sees whole values.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug)]
pub struct ControlBlock {
    /// Guest: [`CONTROL_BLOCK_VERSION`].
    pub version: u32,
    /// Host: why the current exception was injected ([`REASON_NONE`],
    /// [`REASON_NOT_PRESENT`], [`REASON_PAGE_READY`]). The guest resets it to
    /// [`REASON_NONE`] once it has read [`Self::token`].
    pub reason: u32,
    /// Host: token of the current notification.
    pub token: u64,
    /// Host: for "not present", what the policy decided the guest should do
    /// ([`ACTION_RESCHEDULE`] or [`ACTION_HALT`], with
    /// [`ACTION_REQUEST_PAGE`] when the guest must ask for the page).
    pub action: u32,
    /// Guest: [`GUEST_CAN_RESCHEDULE`], [`GUEST_IN_IDLE`], [`GUEST_NO_INJECT`].
    pub guest_state: u32,
    /// Guest: runnable tasks on this vCPU's run queue (policy input).
    pub runnable_tasks: u32,
    /// Guest: preemption-disable depth (0 = preemptible).
    pub preempt_count: u32,
    /// Host: faulting guest physical address of the current "not present".
    pub fault_ipa: u64,
    /// Host: number of tokens ever pushed to [`Self::ready_ring`]
    /// (monotonic; slot = value % [`READY_RING_SLOTS`]).
    pub ready_head: u32,
    /// Guest: number of tokens consumed from [`Self::ready_ring`].
    pub ready_tail: u32,
    /// Guest: the first address (a virtual address of the guest kernel) of
    /// its exception entry and return path, where ELR and SPSR are not yet
    /// saved or already restored. An exception injected while the vCPU's
    /// PC is in `no_inject_start..no_inject_end` would overwrite them, so
    /// the host injects none there: a fault there is served
    /// synchronously. Written once before `APF_ENABLE`; an empty range
    /// (both zero) publishes no window.
    pub no_inject_start: u64,
    /// Guest: the end (exclusive) of the range that
    /// [`Self::no_inject_start`] begins.
    pub no_inject_end: u64,
    /// Host: ready tokens when "ready" is an interrupt.
    pub ready_ring: [u64; READY_RING_SLOTS],
}

impl ControlBlock {
    /// A zeroed block with the version filled in.
    pub const fn new() -> Self {
        ControlBlock {
            version: CONTROL_BLOCK_VERSION,
            reason: REASON_NONE,
            token: 0,
            action: ACTION_RESCHEDULE,
            guest_state: 0,
            runnable_tasks: 0,
            preempt_count: 0,
            fault_ipa: 0,
            ready_head: 0,
            ready_tail: 0,
            no_inject_start: 0,
            no_inject_end: 0,
            ready_ring: [0; READY_RING_SLOTS],
        }
    }
}

impl Default for ControlBlock {
    fn default() -> Self {
        Self::new()
    }
}

/// Byte offsets of [`ControlBlock`] fields, for the host which accesses the
/// block in guest memory field by field.
pub mod cb_offset {
    use super::ControlBlock;
    use core::mem::offset_of;
    /// [`ControlBlock::version`].
    pub const VERSION: usize = offset_of!(ControlBlock, version);
    /// [`ControlBlock::reason`].
    pub const REASON: usize = offset_of!(ControlBlock, reason);
    /// [`ControlBlock::token`].
    pub const TOKEN: usize = offset_of!(ControlBlock, token);
    /// [`ControlBlock::action`].
    pub const ACTION: usize = offset_of!(ControlBlock, action);
    /// [`ControlBlock::guest_state`].
    pub const GUEST_STATE: usize = offset_of!(ControlBlock, guest_state);
    /// [`ControlBlock::runnable_tasks`].
    pub const RUNNABLE_TASKS: usize = offset_of!(ControlBlock, runnable_tasks);
    /// [`ControlBlock::preempt_count`].
    pub const PREEMPT_COUNT: usize = offset_of!(ControlBlock, preempt_count);
    /// [`ControlBlock::fault_ipa`].
    pub const FAULT_IPA: usize = offset_of!(ControlBlock, fault_ipa);
    /// [`ControlBlock::ready_head`].
    pub const READY_HEAD: usize = offset_of!(ControlBlock, ready_head);
    /// [`ControlBlock::ready_tail`].
    pub const READY_TAIL: usize = offset_of!(ControlBlock, ready_tail);
    /// [`ControlBlock::no_inject_start`].
    pub const NO_INJECT_START: usize = offset_of!(ControlBlock, no_inject_start);
    /// [`ControlBlock::no_inject_end`].
    pub const NO_INJECT_END: usize = offset_of!(ControlBlock, no_inject_end);
    /// [`ControlBlock::ready_ring`].
    pub const READY_RING: usize = offset_of!(ControlBlock, ready_ring);
}

const _: () = {
    assert!(core::mem::size_of::<ControlBlock>() == 576);
    assert!(core::mem::align_of::<ControlBlock>() == 64);
    assert!(cb_offset::VERSION == 0);
    assert!(cb_offset::REASON == 4);
    assert!(cb_offset::TOKEN == 8);
    assert!(cb_offset::ACTION == 16);
    assert!(cb_offset::GUEST_STATE == 20);
    assert!(cb_offset::RUNNABLE_TASKS == 24);
    assert!(cb_offset::PREEMPT_COUNT == 28);
    assert!(cb_offset::FAULT_IPA == 32);
    assert!(cb_offset::READY_HEAD == 40);
    assert!(cb_offset::READY_TAIL == 44);
    assert!(cb_offset::NO_INJECT_START == 48);
    assert!(cb_offset::NO_INJECT_END == 56);
    assert!(cb_offset::READY_RING == 64);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips_vcpu_and_id() {
        let t = Token::new(0x1234, 3);
        assert_eq!(t.0, 0x0123_4003);
        assert_eq!(t.vcpu(), 3);
        assert_eq!(t.id(), 0x1234);
        assert!(!t.is_wake_all());
        assert!(Token(TOKEN_WAKE_ALL).is_wake_all());
    }

    #[test]
    fn esr_packs_class_and_syndrome() {
        let v = esr(EC_APF_NOT_PRESENT, 0x1234);
        assert_eq!(esr_ec(v), EC_APF_NOT_PRESENT);
        assert_eq!(v & 0x1FF_FFFF, 0x1234);
        assert_ne!(v & ESR_IL, 0);
    }
}
