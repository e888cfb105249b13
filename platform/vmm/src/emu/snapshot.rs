//! What a snapshot keeps of one emu vCPU, and how an engine is put back
//! in that state (see [`crate::snapshot`] for the file and the run loop's
//! part).
//!
//! The CPU itself is the engine's whole CPU state, as unicorn's context
//! calls copy it (QEMU's `CPUARMState` up to its host pointers: every
//! general, FP/SIMD and system register the software CPU has, PSTATE and
//! the exclusive monitor). The rest is this backend's own: the clock, the
//! instruction count, the debug registers it emulates and the broadcast
//! TLB invalidations seen. Everything else an engine holds (its TLB, its
//! translated code, the instruction watch's hooks) is a cache that a
//! fresh engine rebuilds as it runs; counting stays exact because a block
//! is translated from the same guest code whatever the engine translated
//! before.

use apflab_abi::addr::Gpa;
use apflab_abi::memory_map::RAM_BASE;
use serde::{Deserialize, Serialize};
use unicorn_engine_sys::{
    uc_context, uc_context_alloc, uc_context_free, uc_context_restore, uc_context_save,
    uc_context_size, uc_error,
};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::absent::AbsentPages;
use super::debug_regs::DebugRegs;
use super::regs::engine_err;
use super::vcpu::EmuVcpu;
use crate::snapshot::Refusal;
use apflab_hypervisor::{HypervisorError, Residency};

/// One vCPU in a snapshot.
#[derive(Serialize, Deserialize)]
pub(crate) struct VcpuSnapshot {
    /// The engine's CPU state (see [`CpuContext`]).
    cpu: Vec<u8>,
    /// Instructions executed.
    insns: u64,
    /// Virtual ns not due to instructions.
    extra_ns: u64,
    /// Broadcast TLB invalidations this engine has seen.
    shootdowns_seen: u64,
    /// The debug registers as the guest wrote them.
    debug: DebugRegs,
}

/// The host pointers at the end of the engine's CPU state (QEMU's
/// `cpu_breakpoint[16]`, inside what unicorn's context copies): zero
/// unless QEMU's own breakpoints were armed, which this backend never
/// does (it emulates the debug registers itself, `debug.rs`). A state
/// with any set is not one to write to a file.
const HOST_POINTERS: usize = 16 * 8;

/// unicorn's CPU context of one engine, with its bytes reachable.
///
/// The context is `struct uc_context` (`include/uc_priv.h` of the vendored
/// engine): `size_t context_size` first, the CPU state's `context_size`
/// bytes last, and `uc_context_size` is the whole allocation.
struct CpuContext {
    ctx: *mut uc_context,
    total: usize,
}

impl CpuContext {
    /// A context for `engine`'s CPU.
    ///
    /// # Safety
    ///
    /// `engine` must be a live engine, used on this thread only.
    unsafe fn new(engine: *mut unicorn_engine_sys::uc_engine) -> Result<Self, uc_error> {
        let mut ctx = std::ptr::null_mut();
        // SAFETY: a live engine (this function's contract); `ctx` is a
        // local the call fills.
        let e = unsafe { uc_context_alloc(engine, &mut ctx) };
        if e != uc_error::OK {
            return Err(e);
        }
        // SAFETY: as above.
        let total = unsafe { uc_context_size(engine) };
        Ok(CpuContext { ctx, total })
    }

    /// The CPU state's bytes.
    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: `ctx` is an allocation of `total` bytes whose first field
        // is the size_t `context_size` and whose last `context_size` bytes
        // are the CPU state (see the type's comment); it lives as long as
        // `self`.
        unsafe {
            let len = (self.ctx as *const usize).read_unaligned().min(self.total);
            let data = (self.ctx as *mut u8).add(self.total - len);
            std::slice::from_raw_parts_mut(data, len)
        }
    }
}

impl Drop for CpuContext {
    fn drop(&mut self) {
        // SAFETY: allocated by `uc_context_alloc`, freed once.
        let _ = unsafe { uc_context_free(self.ctx) };
    }
}

impl EmuVcpu {
    /// What a snapshot keeps of this vCPU (between two runs).
    pub(crate) fn save_snapshot(&mut self) -> Result<VcpuSnapshot, HypervisorError> {
        let engine = self.uc.get_handle();
        // SAFETY: the engine is `self.uc`'s, live and on this thread.
        let mut ctx = unsafe { CpuContext::new(engine) }
            .map_err(|e| engine_err("allocate a CPU context", e))?;
        // SAFETY: as above; the context was made for this engine.
        let e = unsafe { uc_context_save(engine, ctx.ctx) };
        if e != uc_error::OK {
            return Err(engine_err("save the CPU state", e));
        }
        let cpu = ctx.bytes().to_vec();
        if cpu.len() < HOST_POINTERS || cpu[cpu.len() - HOST_POINTERS..].iter().any(|&b| b != 0) {
            return Err(HypervisorError::Engine {
                backend: "emu",
                op: format!("save vCPU {}", self.index),
                source: "the engine's CPU state holds breakpoints of its own".into(),
            });
        }
        let st = self.uc.get_data();
        Ok(VcpuSnapshot {
            cpu,
            insns: st.insns,
            extra_ns: st.extra_ns,
            shootdowns_seen: st.shootdowns_seen,
            debug: st.debug.clone(),
        })
    }

    /// Puts this vCPU (a fresh engine of the same build) in the state
    /// `saved`.
    pub(crate) fn restore_snapshot(&mut self, saved: &VcpuSnapshot) -> Result<(), HypervisorError> {
        let engine = self.uc.get_handle();
        // SAFETY: the engine is `self.uc`'s, live and on this thread.
        let mut ctx = unsafe { CpuContext::new(engine) }
            .map_err(|e| engine_err("allocate a CPU context", e))?;
        // SAFETY: as above: the fresh engine's own state fills the context
        // (its header included) before the saved CPU state replaces the
        // bytes.
        let e = unsafe { uc_context_save(engine, ctx.ctx) };
        if e != uc_error::OK {
            return Err(engine_err("read the CPU state", e));
        }
        let bytes = ctx.bytes();
        if bytes.len() != saved.cpu.len() {
            return Err(HypervisorError::Engine {
                backend: "emu",
                op: format!("restore vCPU {}", self.index),
                source: format!(
                    "the saved CPU state has {} bytes, this engine's {}",
                    saved.cpu.len(),
                    bytes.len()
                )
                .into(),
            });
        }
        bytes.copy_from_slice(&saved.cpu);
        // SAFETY: as above.
        let e = unsafe { uc_context_restore(engine, ctx.ctx) };
        if e != uc_error::OK {
            return Err(engine_err("restore the CPU state", e));
        }
        let st = self.uc.get_data_mut();
        st.insns = saved.insns;
        st.extra_ns = saved.extra_ns;
        st.shootdowns_seen = saved.shootdowns_seen;
        st.debug = saved.debug.clone();
        // The hooks of the armed breakpoints and watchpoints are installed
        // at the next run.
        st.debug.mark_changed();
        self.drop_caches()
    }
}

impl EmuVcpu {
    /// Drops what the engine caches (its translated code and TLB, the
    /// watch's view of blocks): done at the boot point in every run, so
    /// that a run resumed there (whose engines start empty) and one that
    /// went through it translate the same blocks from then on. Which
    /// blocks an engine translates can depend on what it translated
    /// before (a block cut short once stays cut in the cache), and blocks
    /// are where slices end and interrupts are taken.
    pub(crate) fn drop_caches(&mut self) -> Result<(), HypervisorError> {
        let st = self.uc.get_data_mut();
        st.watch.forget_blocks();
        st.last_fetch = (u64::MAX, 0);
        self.uc
            .ctl_flush_tb()
            .map_err(|e| engine_err("flush translated code", e))?;
        self.flush_tlb()
    }

    /// Broadcast TLB invalidations made in the VM so far.
    pub(crate) fn shootdowns_made(&self) -> u64 {
        self.uc.get_data().shootdowns.made()
    }

    /// Sets the VM's count of broadcast TLB invalidations (shared by every
    /// engine) to a snapshot's.
    pub(crate) fn set_shootdowns_made(&self, n: u64) {
        self.uc.get_data().shootdowns.set_made(n);
    }
}

/// The [`Residency`] a resuming run's fault engine sets up against: it
/// records which pages the engine withholds, and its page writes land in
/// scratch memory, for the snapshot's RAM already holds what the same
/// set-up wrote before the boot.
pub(crate) struct InitRecorder {
    absent: AbsentPages,
    scratch: GuestMemoryMmap,
}

impl InitRecorder {
    /// A recorder for a VM with `ram_size` bytes of RAM.
    pub(crate) fn new(ram_size: u64) -> Result<Self, Refusal> {
        let scratch = GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), ram_size as usize)])
            .map_err(Refusal::ScratchMemory)?;
        Ok(InitRecorder {
            absent: AbsentPages::new(ram_size),
            scratch,
        })
    }

    /// The pages withheld, as [`super::EmuResidency::absent_words`] gives
    /// them.
    pub(crate) fn absent_words(&self) -> Vec<u64> {
        self.absent.words()
    }
}

impl Residency for InitRecorder {
    fn set_resident(&mut self, gpa: Gpa, resident: bool) -> Result<(), HypervisorError> {
        let i = self
            .absent
            .page_index(gpa.0)
            .ok_or(HypervisorError::OutsideRam(gpa.0))?;
        self.absent.set(i, !resident);
        Ok(())
    }

    fn is_resident(&self, gpa: Gpa) -> bool {
        self.absent.page_index(gpa.0).is_some() && !self.absent.is_absent(gpa.0)
    }

    fn guest_memory(&self) -> &GuestMemoryMmap {
        &self.scratch
    }
}
