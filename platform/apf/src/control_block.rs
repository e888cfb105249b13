//! The guest's control block ([`apflab_abi::apf::ControlBlock`]) as the
//! host reads and writes it: field by field in guest memory, at the address
//! the guest registered with `APF_ENABLE`.
//!
//! Everything here is hostile input: the address is checked once at
//! registration (aligned, inside RAM, clear of the kernel image's read-only
//! segments, which the host would otherwise write into; overlapping the
//! kernel's own data is the guest's business), and every access afterwards
//! goes through guest memory, which refuses anything outside RAM.

use core::ops::Range;

use apflab_abi::addr::Gpa;
use apflab_abi::apf::{
    CONTROL_BLOCK_VERSION, ControlBlock, GUEST_NO_INJECT, READY_RING_SLOTS, cb_offset,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Why a control block cannot be registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadBlock {
    /// Not 64-byte aligned.
    Misaligned,
    /// Not wholly inside guest RAM.
    OutsideRam,
    /// Over a segment the kernel image loads read-only (its code or
    /// constants).
    OverKernelCode,
    /// Its version is not [`CONTROL_BLOCK_VERSION`].
    Version,
}

/// Whether an exception injected with the vCPU at `pc` would land in the
/// guest's no-inject window: its `guest_state` has `GUEST_NO_INJECT`, or
/// `pc` is in the `window` it published.
pub fn in_no_inject_window(guest_state: u32, window: &Range<u64>, pc: u64) -> bool {
    guest_state & GUEST_NO_INJECT != 0 || window.contains(&pc)
}

/// A registered control block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlBlockRef {
    base: Gpa,
}

impl ControlBlockRef {
    /// Checks the block the guest registered at `base`; `read_only` are
    /// the physical ranges the kernel image loads read-only.
    pub fn register(
        mem: &GuestMemoryMmap,
        base: Gpa,
        read_only: &[Range<u64>],
    ) -> Result<Self, BadBlock> {
        if !base.0.is_multiple_of(64) {
            return Err(BadBlock::Misaligned);
        }
        let size = core::mem::size_of::<ControlBlock>() as u64;
        let end = base.0.checked_add(size - 1).ok_or(BadBlock::OutsideRam)?;
        let b = ControlBlockRef { base };
        // Both ends inside RAM (guest RAM is one region).
        if mem.read_obj::<u8>(GuestAddress(end)).is_err() {
            return Err(BadBlock::OutsideRam);
        }
        if read_only.iter().any(|r| base.0 < r.end && r.start <= end) {
            return Err(BadBlock::OverKernelCode);
        }
        match b.read_u32(mem, cb_offset::VERSION) {
            Some(CONTROL_BLOCK_VERSION) => Ok(b),
            Some(_) => Err(BadBlock::Version),
            None => Err(BadBlock::OutsideRam),
        }
    }

    fn at(&self, offset: usize) -> GuestAddress {
        GuestAddress(self.base.0 + offset as u64)
    }

    fn read_u32(&self, mem: &GuestMemoryMmap, offset: usize) -> Option<u32> {
        mem.read_obj::<u32>(self.at(offset)).ok()
    }

    /// `guest_state` (0 if unreadable).
    pub fn guest_state(&self, mem: &GuestMemoryMmap) -> u32 {
        self.read_u32(mem, cb_offset::GUEST_STATE).unwrap_or(0)
    }

    /// The no-inject window the guest published (empty if unreadable).
    pub fn no_inject_window(&self, mem: &GuestMemoryMmap) -> Range<u64> {
        let read = |offset| mem.read_obj::<u64>(self.at(offset)).unwrap_or(0);
        read(cb_offset::NO_INJECT_START)..read(cb_offset::NO_INJECT_END)
    }

    /// `runnable_tasks` (0 if unreadable).
    pub fn runnable_tasks(&self, mem: &GuestMemoryMmap) -> u32 {
        self.read_u32(mem, cb_offset::RUNNABLE_TASKS).unwrap_or(0)
    }

    /// `reason` (what the last injected exception was for; the guest resets
    /// it once read).
    pub fn reason(&self, mem: &GuestMemoryMmap) -> Option<u32> {
        self.read_u32(mem, cb_offset::REASON)
    }

    /// `ready_tail`, as the guest last wrote it.
    pub fn ready_tail(&self, mem: &GuestMemoryMmap) -> Option<u32> {
        self.read_u32(mem, cb_offset::READY_TAIL)
    }

    /// Describes the "not present" being injected: `reason`, `token`,
    /// `action` and `fault_ipa`. Whether the writes landed (the block is in
    /// RAM, checked at registration, so they do).
    pub fn write_notification(
        &self,
        mem: &GuestMemoryMmap,
        reason: u32,
        token: u64,
        action: u32,
        fault: Gpa,
    ) -> bool {
        mem.write_obj(token, self.at(cb_offset::TOKEN)).is_ok()
            && mem.write_obj(action, self.at(cb_offset::ACTION)).is_ok()
            && mem
                .write_obj(fault.0, self.at(cb_offset::FAULT_IPA))
                .is_ok()
            && mem.write_obj(reason, self.at(cb_offset::REASON)).is_ok()
    }

    /// Describes the "page ready" exception being injected for `token`.
    pub fn write_ready(&self, mem: &GuestMemoryMmap, token: u64) -> bool {
        mem.write_obj(token, self.at(cb_offset::TOKEN)).is_ok()
            && mem
                .write_obj(
                    apflab_abi::apf::REASON_PAGE_READY,
                    self.at(cb_offset::REASON),
                )
                .is_ok()
    }

    /// Puts `token` into ring slot `head % READY_RING_SLOTS` and publishes
    /// `head + 1` (the slot first, so the guest never reads a stale one).
    pub fn push_ready(&self, mem: &GuestMemoryMmap, head: u32, token: u64) -> bool {
        let slot = (head as usize) % READY_RING_SLOTS;
        mem.write_obj(token, self.at(cb_offset::READY_RING + 8 * slot))
            .is_ok()
            && mem
                .write_obj(head.wrapping_add(1), self.at(cb_offset::READY_HEAD))
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apflab_abi::memory_map::RAM_BASE;

    fn ram() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), 1 << 20)]).unwrap()
    }

    #[test]
    fn a_block_is_registered_only_aligned_inside_ram_and_of_this_version() {
        let mem = ram();
        let base = Gpa(RAM_BASE + 0x1000);
        assert_eq!(
            ControlBlockRef::register(&mem, base, &[]),
            Err(BadBlock::Version)
        );
        mem.write_obj(CONTROL_BLOCK_VERSION, GuestAddress(base.0))
            .unwrap();
        let cb = ControlBlockRef::register(&mem, base, &[]).unwrap();
        assert_eq!(
            ControlBlockRef::register(&mem, Gpa(base.0 + 8), &[]),
            Err(BadBlock::Misaligned)
        );
        assert_eq!(
            ControlBlockRef::register(&mem, Gpa(RAM_BASE + (1 << 20) - 64), &[]),
            Err(BadBlock::OutsideRam)
        );
        assert_eq!(
            ControlBlockRef::register(&mem, Gpa(u64::MAX - 63), &[]),
            Err(BadBlock::OutsideRam)
        );
        // Over the kernel's code, or reaching into it from below; a block
        // that ends where the code starts is clear of it.
        let size = core::mem::size_of::<ControlBlock>() as u64;
        let code = base.0 + size..base.0 + size + 0x1000;
        for (at, read_only, ok) in [
            (base.0, code.start - 64..code.end, false),
            (base.0, code.clone(), true),
            (code.start, code.clone(), false),
            (code.end - 64, code.clone(), false),
            (code.end, code.clone(), true),
        ] {
            mem.write_obj(CONTROL_BLOCK_VERSION, GuestAddress(at))
                .unwrap();
            let got = ControlBlockRef::register(&mem, Gpa(at), std::slice::from_ref(&read_only));
            assert_eq!(
                got.is_ok(),
                ok,
                "block at {at:#x}, code {read_only:x?}: {got:?}"
            );
            if !ok {
                assert_eq!(got, Err(BadBlock::OverKernelCode));
            }
        }
        assert!(cb.push_ready(&mem, 63, 0x5001));
        let slot = base.0 + cb_offset::READY_RING as u64 + 8 * 63;
        assert_eq!(mem.read_obj::<u64>(GuestAddress(slot)).unwrap(), 0x5001);
        let head = base.0 + cb_offset::READY_HEAD as u64;
        assert_eq!(mem.read_obj::<u32>(GuestAddress(head)).unwrap(), 64);
    }
}
