//! The virtual TLB fill: unicorn asks for every translation, and the VMM
//! answers with the guest's own stage-1 walk, the permissions of the
//! access (the engine's MMU index tells EL0's, EL1's and EL1's under
//! PSTATE.PAN apart, and gives an unprivileged `LDTR`/`STTR` at EL1 EL0's;
//! each index caches its own entries), and the pager's word on the target
//! page. A
//! page the pager withholds fails the fill before the access has any
//! effect, so the instruction can be retried once the page is in.

use std::sync::Arc;

use apflab_abi::addr::Gpa;
use apflab_abi::memory_map::PAGE_SIZE;
use unicorn_engine::{MemType, Prot, RegisterARM64, TlbEntry, Unicorn};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::absent::AbsentPages;
use super::exception::{Access, GuestFault};
use super::regs::{EngineCode, SCTLR_EL1, TCR_EL1, cp};
use super::state::HookState;
use apflab_hypervisor::arch::stage1::{
    AccessLevel, GuestPhysMem, Permissions, TranslationRegs, UnsupportedSetup, Walk, WalkError,
};
use apflab_hypervisor::arch::syndrome::FaultStatus;
use apflab_hypervisor::arch::{SysRegId, pstate};
use apflab_hypervisor::{CrashReason, NotResidentFault, PageAccess, VmExit};
use unicorn_engine_sys::{uc_error, uc_tlb_fill_mmu_index};

/// Guest RAM as the stage-1 walk of a TLB fill reads it.
struct WalkMemory<'a> {
    memory: &'a GuestMemoryMmap,
    absent: &'a AbsentPages,
}

impl GuestPhysMem for WalkMemory<'_> {
    fn is_resident(&self, ipa: u64) -> bool {
        !self.absent.is_absent(ipa)
    }
    fn read_u64(&self, ipa: u64) -> Option<u64> {
        self.memory.read_obj::<u64>(GuestAddress(ipa)).ok()
    }
    fn read_u32(&self, ipa: u64) -> Option<u32> {
        self.memory.read_obj::<u32>(GuestAddress(ipa)).ok()
    }
}

/// The engine's TLB fill for the page at `va`: the guest's stage-1 walk,
/// the permissions of the access (see the module comment), and the pager's word on
/// the target page. `None` fails the access before it has any effect; the
/// reason is left in `pending` for [`Vcpu::run`] to return, or, for a fault
/// of the guest's own translation, in `fault` for the guest to take.
pub(super) fn fill_tlb(
    uc: &mut Unicorn<'_, HookState>,
    va: u64,
    kind: MemType,
) -> Option<TlbEntry> {
    let pc = uc.pc_read().unwrap_or(0);
    let ps = uc.reg_read(RegisterARM64::PSTATE).unwrap_or(0);
    let needs = access_level(uc, ps);
    let regs = translation_regs(uc);
    let st = uc.get_data_mut();
    let mem = WalkMemory {
        memory: &st.memory,
        absent: &st.absent,
    };
    let crash = |reason: CrashReason| VmExit::Crash {
        pc,
        addr: Some(va),
        reason,
    };
    let access = Access::of(kind);
    let abort = |status: FaultStatus| GuestFault::Abort {
        page_va: va,
        access,
        status,
    };
    let (exit, fault, entry) = match regs.map(|r| r.walk(va, &mem)) {
        Ok(Ok(Walk::Leaf { ipa, desc, level })) => {
            let page = ipa & !(PAGE_SIZE - 1);
            let perms = Permissions::of(desc, needs);
            let allowed = match kind {
                MemType::WRITE => perms.write,
                MemType::FETCH => perms.exec,
                _ => perms.read,
            };
            if !allowed {
                let status = if Permissions::access_flag_clear(desc) {
                    FaultStatus::AccessFlag(level)
                } else {
                    FaultStatus::Permission(level)
                };
                (None, Some(abort(status)), None)
            } else if st.absent.is_absent(page) {
                (
                    Some(VmExit::NotResident(NotResidentFault::new(
                        Gpa(page),
                        match kind {
                            MemType::WRITE => PageAccess::Write,
                            MemType::FETCH => PageAccess::Fetch,
                            _ => PageAccess::Read,
                        },
                        pc,
                        va,
                        ps,
                    ))),
                    None,
                    None,
                )
            } else {
                if kind == MemType::FETCH && !st.probing.get() {
                    st.last_fetch = (va & !(PAGE_SIZE - 1), ipa & !(PAGE_SIZE - 1));
                }
                let mut prot = Prot::NONE;
                for (ok, p) in [
                    (perms.read, Prot::READ),
                    (perms.write, Prot::WRITE),
                    (perms.exec, Prot::EXEC),
                ] {
                    if ok {
                        prot |= p;
                    }
                }
                (
                    None,
                    None,
                    // The engine's TLB pages are the guest's smallest,
                    // 4 KiB (set in `vcpu.rs`): map exactly the one asked
                    // for.
                    Some(TlbEntry {
                        paddr: ipa,
                        perms: prot,
                    }),
                )
            }
        }
        Ok(Ok(Walk::NeedsPage(ipa))) => (
            Some(VmExit::NotResident(NotResidentFault::new(
                Gpa(ipa).page_base(),
                PageAccess::Read,
                pc,
                va,
                ps,
            ))),
            None,
            None,
        ),
        Ok(Err(e)) => match walk_fault(&e) {
            Ok(status) => (None, Some(abort(status)), None),
            Err(setup) => (
                Some(crash(CrashReason::UnsupportedTranslation(setup))),
                None,
                None,
            ),
        },
        Err(e) => (
            Some(crash(CrashReason::MmuRegistersUnreadable(Arc::new(
                EngineCode(e),
            )))),
            None,
            None,
        ),
    };
    if !st.probing.get() {
        if exit.is_some() {
            st.pending = exit;
        }
        if fault.is_some() {
            st.fault = fault;
        }
    }
    entry
}

/// QEMU's AArch64 MMU indexes (`ARMMMUIdx` without the profile bit) of
/// the EL1&0 regime: EL0's (tasks, and `LDTR`/`STTR` at EL1), EL1's, and
/// EL1's with PSTATE.PAN set.
const MMU_IDX_E10_0: i32 = 0;
const MMU_IDX_E10_1: i32 = 2;
const MMU_IDX_E10_1_PAN: i32 = 3;

/// Whose permissions the access being filled needs, from the engine's MMU
/// index of the fill (`third_party/unicorn` patch 0006); from the
/// exception level in `ps` if the engine gives none.
fn access_level(uc: &Unicorn<'_, HookState>, ps: u64) -> AccessLevel {
    let mut idx = -1;
    // SAFETY: the engine's own handle, inside its TLB fill hook; `idx` is
    // a valid place for the result.
    if unsafe { uc_tlb_fill_mmu_index(uc.get_handle(), &mut idx) } != uc_error::OK {
        idx = -1;
    }
    match idx {
        MMU_IDX_E10_0 => AccessLevel::User,
        MMU_IDX_E10_1 => AccessLevel::Kernel,
        MMU_IDX_E10_1_PAN => AccessLevel::KernelPan,
        _ if ps & pstate::MODE_MASK == 0 => AccessLevel::User,
        _ => AccessLevel::Kernel,
    }
}

/// The fault the guest's own MMU raises for a walk that fails with `e`;
/// the setup the walker does not implement otherwise (the run cannot go on
/// faithfully).
fn walk_fault(e: &WalkError) -> Result<FaultStatus, UnsupportedSetup> {
    Ok(match *e {
        WalkError::NotMapped { level, .. } => FaultStatus::Translation(level),
        // Outside TnSZ's range, or EPDn set: a level-0 translation fault.
        WalkError::OutOfRange { .. } | WalkError::WalksDisabled { .. } => {
            FaultStatus::Translation(0)
        }
        WalkError::TableOutsideRam { level, .. } => FaultStatus::ExternalOnWalk(level),
        WalkError::Unsupported(setup) => return Err(setup),
    })
}

/// The vCPU's EL1&0 translation registers.
fn translation_regs(uc: &Unicorn<'_, HookState>) -> Result<TranslationRegs, uc_error> {
    let coproc = |reg: SysRegId| {
        let mut c = cp(reg);
        uc.reg_read_arm64_coproc(&mut c).map(|()| c.val)
    };
    let reg = |r: RegisterARM64| uc.reg_read(r);
    Ok(TranslationRegs {
        sctlr: coproc(SCTLR_EL1)?,
        tcr: coproc(TCR_EL1)?,
        ttbr0: reg(RegisterARM64::TTBR0_EL1)?,
        ttbr1: reg(RegisterARM64::TTBR1_EL1)?,
    })
}
