//! A guest that does anything, driving the engine off-line: faults from
//! EL0 and EL1 with IRQs masked or not, protocol calls with any function id
//! and arguments, control blocks anywhere (misaligned, straddling the end
//! of RAM, outside it, another vCPU's), writes of any value into any field
//! and of any bytes around a block, resumes in any state and time passing.
//!
//! One driver for two callers, which differ only in where the guest's
//! choices come from ([`Choices`]): the engine's test draws them from a
//! seeded generator, the fuzz target from the fuzzer's input. Both then
//! check the same books ([`HostileGuest::assert_books`]).

use apflab_abi::addr::Pfn;
use apflab_abi::apf::{self, CONTROL_BLOCK_VERSION, MAX_OUTSTANDING, cb_offset};
use apflab_abi::hypercall as hc;
use apflab_abi::memory_map::RAM_BASE;
use apflab_hypervisor::arch::pstate;
use apflab_hypervisor::{EngineCall, FaultHook, NotResidentFault, PageAccess, ResumeState};
use apflab_pager::ManagedRange;
use vm_memory::{Bytes, GuestAddress};

use crate::Engine;
use crate::plain::PlainMachine;

/// Where a hostile guest's choices come from. `None` ends the script (the
/// source is used up).
pub trait Choices {
    /// A value in `0..n` (`n` > 0).
    fn below(&mut self, n: u64) -> Option<u64>;

    /// Any 64-bit value.
    fn any(&mut self) -> Option<u64>;

    /// One of `from` (not empty).
    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T>
    where
        Self: Sized,
    {
        Some(from[self.below(from.len() as u64)? as usize])
    }

    /// True `num` times in `den`.
    fn chance(&mut self, num: u64, den: u64) -> Option<bool>
    where
        Self: Sized,
    {
        Some(self.below(den)? < num)
    }
}

/// The guest's code address its faults and resumes are at, most of the
/// time (a kernel-looking one).
const GUEST_PC: u64 = 0x4000_1000;

/// The hostile guest of a machine with `vcpus` vCPUs and `ram` bytes of
/// guest RAM whose pager manages `managed`.
#[derive(Clone, Copy, Debug)]
pub struct HostileGuest {
    /// vCPUs the guest uses (the engine's count).
    pub vcpus: u32,
    /// Bytes of guest RAM from `RAM_BASE`.
    pub ram: u64,
    /// The pages the pager manages (the ones the guest faults on).
    pub managed: ManagedRange,
}

impl HostileGuest {
    /// Where a well-behaved guest keeps vCPU `v`'s control block.
    pub fn control_block(v: u32) -> u64 {
        RAM_BASE + 0x10_0000 + u64::from(v) * 0x1000
    }

    /// A control block base as a guest might pass it: its own, misaligned,
    /// straddling the end of RAM, outside RAM, another vCPU's, or any value
    /// at all.
    fn block_base<C: Choices>(&self, c: &mut C, v: u32) -> Option<u64> {
        let own = Self::control_block(v);
        Some(match c.below(10)? {
            0..=5 => own,
            6 => own + 1 + c.below(63)?,
            7 => RAM_BASE + self.ram - c.below(1025)?,
            8 => 0x1000,
            _ if c.chance(1, 2)? => Self::control_block(c.below(u64::from(self.vcpus))? as u32),
            _ => c.any()?,
        })
    }

    /// A function id: a known one mostly, else any in apflab's range.
    fn function<C: Choices>(c: &mut C) -> Option<u32> {
        const KNOWN: [u32; 8] = [
            hc::FN_FEATURES,
            hc::FN_APF_ENABLE,
            hc::FN_APF_DISABLE,
            hc::FN_APF_ACK,
            hc::FN_APF_PAGE_REQUEST,
            hc::FN_REPORT,
            hc::FN_PANIC,
            hc::FN_TASK_DONE,
        ];
        Some(if c.chance(7, 8)? {
            c.pick(&KNOWN)?
        } else {
            hc::APFLAB_FN_BASE | c.below(1 << 16)? as u32
        })
    }

    /// One step of the guest on one of its vCPUs, and the time passing
    /// before it; `None` once `c` is used up. What the engine answers is
    /// not checked here: only that it does not break
    /// ([`HostileGuest::assert_books`]).
    pub fn step<C: Choices>(
        &self,
        c: &mut C,
        e: &mut Engine,
        m: &mut PlainMachine,
        now: &mut u64,
    ) -> Option<()> {
        let v = c.below(u64::from(self.vcpus))? as u32;
        *now += c.below(20_000)?;
        let cb = Self::control_block(v);
        match c.below(12)? {
            0..=3 => {
                let page = Pfn(self.managed.first_pfn + c.below(self.managed.pages.min(256))?);
                let access = if c.chance(1, 8)? {
                    PageAccess::Fetch
                } else {
                    c.pick(&[PageAccess::Read, PageAccess::Write])?
                };
                let mut ps = c.pick(&[pstate::EL0T, pstate::EL0T, pstate::EL0T, pstate::EL1H])?;
                if c.chance(1, 3)? {
                    ps |= pstate::I;
                }
                let (pc, va) = if c.chance(3, 4)? {
                    (GUEST_PC, 0x10_0000)
                } else {
                    (c.any()?, c.any()?)
                };
                let fault = NotResidentFault::new(page.gpa(), access, pc, va, ps);
                let _ = e.on_not_resident(v, &fault, *now, m);
            }
            4 => {
                let _ = e.on_wait_end(v, *now, m);
            }
            5 => {
                let _ = e.on_time(*now, m);
            }
            6 => {
                let pc = if c.chance(3, 4)? {
                    GUEST_PC + 0x1000
                } else {
                    c.any()?
                };
                let state = ResumeState {
                    el: c.pick(&[0, 1])?,
                    pc,
                };
                let _ = e.on_resume(v, state, *now, m);
            }
            7 => {
                // Registering a block (prepared as a guest does, mostly), or
                // unregistering.
                let base = self.block_base(c, v)?;
                if c.chance(7, 8)? {
                    let version = c.pick(&[CONTROL_BLOCK_VERSION, CONTROL_BLOCK_VERSION, 99])?;
                    let _ = m.memory.write_obj(version, GuestAddress(base));
                    // No no-inject window yet. (The base is any value, so
                    // its fields' addresses wrap, as the guest's would.)
                    let window = GuestAddress(base.wrapping_add(cb_offset::NO_INJECT_START as u64));
                    let _ = m.memory.write_obj([0u64; 2], window);
                }
                let function =
                    c.pick(&[hc::FN_APF_ENABLE, hc::FN_APF_ENABLE, hc::FN_APF_DISABLE])?;
                let call = EngineCall {
                    function,
                    args: [base, c.any()?, c.any()?, 0, 0],
                };
                let _ = e.on_hypercall(v, call, *now, m);
            }
            8 => {
                // Consume some of the ring (or claim more than was pushed,
                // or anything), then ACK.
                let head: u32 = m
                    .memory
                    .read_obj(GuestAddress(cb + cb_offset::READY_HEAD as u64))
                    .unwrap_or(0);
                let tail = if c.chance(7, 8)? {
                    head.wrapping_sub(c.below(4)? as u32)
                        .wrapping_add(c.pick(&[0, 0, 0, 5])?)
                } else {
                    c.any()? as u32
                };
                let _ = m
                    .memory
                    .write_obj(tail, GuestAddress(cb + cb_offset::READY_TAIL as u64));
                let ack = EngineCall {
                    function: hc::FN_APF_ACK,
                    args: [0; 5],
                };
                let _ = e.on_hypercall(v, ack, *now, m);
            }
            9 => {
                // A request for the token just handed out, mostly.
                let current: u64 = m
                    .memory
                    .read_obj(GuestAddress(cb + cb_offset::TOKEN as u64))
                    .unwrap_or(0);
                let token = match c.below(8)? {
                    0..=4 => current,
                    5 => apf::TOKEN_WAKE_ALL,
                    _ => c.any()?,
                };
                let call = EngineCall {
                    function: hc::FN_APF_PAGE_REQUEST,
                    args: [token, 0, 0, 0, 0],
                };
                let _ = e.on_hypercall(v, call, *now, m);
            }
            10 => {
                // Any call with any arguments.
                let call = EngineCall {
                    function: Self::function(c)?,
                    args: [c.any()?, c.any()?, c.any()?, 0, 0],
                };
                let _ = e.on_hypercall(v, call, *now, m);
            }
            _ => {
                if c.chance(1, 4)? {
                    // A no-inject window over the PC the faults and resumes
                    // use, over any range, or mostly none (in one over the
                    // PC every fault is sync), so that tokens still get
                    // far.
                    let (start, len) = match c.below(4)? {
                        0 => (GUEST_PC, 1 + c.below(0x2000)?),
                        1 => (c.any()?, c.any()?),
                        _ => (0, 0),
                    };
                    let at = |o: usize| GuestAddress(cb + o as u64);
                    let _ = m.memory.write_obj(start, at(cb_offset::NO_INJECT_START));
                    let _ = m
                        .memory
                        .write_obj(start.wrapping_add(len), at(cb_offset::NO_INJECT_END));
                } else if c.chance(3, 4)? {
                    // Any value into a field the guest writes, weighted
                    // towards states without GUEST_NO_INJECT (in which
                    // every fault is sync) so that tokens still get far.
                    let field = c.pick(&[
                        cb_offset::REASON,
                        cb_offset::GUEST_STATE,
                        cb_offset::RUNNABLE_TASKS,
                        cb_offset::PREEMPT_COUNT,
                    ])?;
                    let value = c.pick(&[0, 1, 1, 2, 3, 3, 7, u32::MAX])?;
                    let _ = m.memory.write_obj(value, GuestAddress(cb + field as u64));
                } else {
                    // Any bytes anywhere in the block or just past it.
                    let at = cb + c.below(641)?;
                    let len = 1 + c.below(16)? as usize;
                    let bytes: Vec<u8> = (0..len)
                        .map(|_| c.any().map(|b| b as u8))
                        .collect::<Option<_>>()?;
                    let _ = m.memory.write_slice(&bytes, GuestAddress(at));
                }
            }
        }
        Some(())
    }

    /// Checks the books of every token after any script, from the engine's
    /// metrics and event log: no more tokens ended than were handed out, no
    /// vCPU ever held more than [`MAX_OUTSTANDING`], one life per token,
    /// each life in order (handed out once, consumed at most once, never
    /// after it was dropped, never before its page came in), and no page
    /// made absent outside the managed range.
    ///
    /// # Panics
    /// On the first broken rule, naming it.
    pub fn assert_books(&self, e: &Engine, m: &PlainMachine) {
        let mt = e.metrics();
        assert!(
            mt.ready_delivered + mt.tokens_dropped <= mt.async_faults,
            "more tokens ended than were handed out: {mt:?}"
        );
        assert!(
            mt.outstanding_high_water
                .iter()
                .all(|&n| n as usize <= MAX_OUTSTANDING),
            "a vCPU held more than {MAX_OUTSTANDING} tokens: {mt:?}"
        );
        let lives = crate::events::lives(e.events());
        if e.events_dropped() == 0 {
            assert_eq!(lives.len() as u64, mt.async_faults, "one life per token");
        }
        for (token, life) in &lives {
            if let Err(broken) = crate::events::check_life(*token, life) {
                panic!("{broken}");
            }
        }
        for page in &m.absent {
            let pfn = page.0 >> 12;
            assert!(
                self.managed.first_pfn <= pfn && pfn < self.managed.first_pfn + self.managed.pages,
                "{page:#x} made absent outside the managed range"
            );
        }
    }
}
