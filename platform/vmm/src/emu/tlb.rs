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
use super::fault::{Access, GuestFault};
use super::regs::EngineCode;
use super::state::HookState;
use apflab_hypervisor::arch::pstate;
use apflab_hypervisor::arch::stage1::{
    AccessLevel, GuestPhysMem, Permissions, TranslationRegs, UnsupportedSetup, Walk, WalkError,
};
use apflab_hypervisor::arch::syndrome::FaultStatus;
use apflab_hypervisor::{CrashReason, NotResidentFault, PageAccess, VmExit};
use unicorn_engine_sys::{uc_arm64_tlb_fill_regs, uc_error, uc_tlb_fill_mmu_index};

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

/// What a TLB fill found, before the PC is read: only a fill that stops
/// the vCPU reports it, and reading it on every fill (through
/// unicorn-engine's `pc_read`, which asks the engine for its mode first)
/// took 18 % of a store-heavy guest's `perf` samples.
enum Filled {
    /// The translation to give the engine.
    Entry(TlbEntry),
    /// A fault of the guest's own translation, for the guest to take.
    Fault(GuestFault),
    /// The target page, or a table of the walk, is withheld by the pager.
    NotResident { page: Gpa, access: PageAccess },
    /// A setup the walk cannot follow faithfully.
    Crash(CrashReason),
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
    let (regs, ps) = match fill_regs(uc) {
        Ok((regs, ps)) => (Ok(regs), ps),
        Err(e) => (Err(e), 0),
    };
    let needs = access_level(uc, ps);
    let st = uc.get_data_mut();
    let mem = WalkMemory {
        memory: &st.memory,
        absent: &st.absent,
    };
    let access = Access::of(kind);
    let abort = |status: FaultStatus| {
        Filled::Fault(GuestFault::Abort {
            page_va: va,
            access,
            status,
        })
    };
    let filled = match regs.map(|r| r.walk(va, &mem)) {
        Ok(Ok(Walk::Leaf { ipa, desc, level })) => {
            let page = ipa & !(PAGE_SIZE - 1);
            let perms = Permissions::of(desc, needs);
            let allowed = match kind {
                MemType::WRITE => perms.write,
                MemType::FETCH => perms.exec,
                _ => perms.read,
            };
            if !allowed {
                abort(if Permissions::access_flag_clear(desc) {
                    FaultStatus::AccessFlag(level)
                } else {
                    FaultStatus::Permission(level)
                })
            } else if st.absent.is_absent(page) {
                Filled::NotResident {
                    page: Gpa(page),
                    access: match kind {
                        MemType::WRITE => PageAccess::Write,
                        MemType::FETCH => PageAccess::Fetch,
                        _ => PageAccess::Read,
                    },
                }
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
                // The engine's TLB pages are the guest's smallest, 4 KiB
                // (set in `vcpu.rs`): map exactly the one asked for.
                Filled::Entry(TlbEntry {
                    paddr: ipa,
                    perms: prot,
                })
            }
        }
        Ok(Ok(Walk::NeedsPage(ipa))) => Filled::NotResident {
            page: Gpa(ipa).page_base(),
            access: PageAccess::Read,
        },
        Ok(Err(e)) => match walk_fault(&e) {
            Ok(status) => abort(status),
            Err(setup) => Filled::Crash(CrashReason::UnsupportedTranslation(setup)),
        },
        Err(e) => Filled::Crash(CrashReason::MmuRegistersUnreadable(Arc::new(EngineCode(e)))),
    };
    let probing = st.probing.get();
    let pc = |uc: &Unicorn<'_, HookState>| uc.reg_read(RegisterARM64::PC).unwrap_or(0);
    let exit = match filled {
        Filled::Entry(entry) => return Some(entry),
        // A probe (an instruction read of the VMM's own) leaves the vCPU
        // as it was.
        _ if probing => return None,
        Filled::Fault(fault) => {
            uc.get_data_mut().fault = Some(fault);
            return None;
        }
        Filled::NotResident { page, access } => {
            VmExit::NotResident(NotResidentFault::new(page, access, pc(uc), va, ps))
        }
        Filled::Crash(reason) => VmExit::Crash {
            pc: pc(uc),
            addr: Some(va),
            reason,
        },
    };
    uc.get_data_mut().pending = Some(exit);
    None
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

/// The vCPU's EL1&0 translation registers and PSTATE, as the fill in
/// progress sees them, in one call into the engine (`third_party/unicorn`
/// patch 0008): a fill runs on every TLB miss, and one register read each
/// was a tenth of a store-heavy guest's time.
fn fill_regs(uc: &Unicorn<'_, HookState>) -> Result<(TranslationRegs, u64), uc_error> {
    let mut r = [0u64; 5];
    // SAFETY: the engine's own handle, inside its TLB fill hook; `r` has
    // room for the five values it writes.
    match unsafe { uc_arm64_tlb_fill_regs(uc.get_handle(), r.as_mut_ptr()) } {
        uc_error::OK => Ok((
            TranslationRegs {
                sctlr: r[0],
                tcr: r[1],
                ttbr0: r[2],
                ttbr1: r[3],
            },
            r[4],
        )),
        e => Err(e),
    }
}
