//! The pager behind a run: [`apflab_pager::VirtualPager`] driven through the
//! VMM's [`NotResidentHandler`] hook, in the backend's time (virtual on emu,
//! host time since the start of the run on kvm).
//!
//! This is the synchronous baseline: the faulting vCPU stalls until its page
//! is in (the other vCPUs keep running), then retries the access. The
//! pager decides which page leaves and when the fetch completes; this
//! module only applies those decisions to guest memory and to the emu
//! backend's residency map.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use apflab_abi::memory_map::PAGE_SIZE;
use apflab_pager::{Access, FaultPlan, PagerMetrics, VirtualPager};
use apflab_vmm::hypervisor::{NotResidentFault, Residency};
use apflab_vmm::{FaultDecision, NotResidentHandler};
use vm_memory::{Bytes, GuestAddress};

/// The pager, shared between the VM (which drives it) and the runner (which
/// reads its metrics once the VM is done).
#[derive(Clone)]
pub struct FarMemory {
    state: Rc<RefCell<State>>,
}

struct State {
    pager: VirtualPager,
    /// When each stalled vCPU began waiting.
    stalled_since: HashMap<u32, u64>,
    /// Reused page buffer.
    page: Box<[u8; PAGE_SIZE as usize]>,
}

impl FarMemory {
    /// Wraps a pager built from the run's `[pager]` section.
    pub fn new(pager: VirtualPager) -> Self {
        FarMemory {
            state: Rc::new(RefCell::new(State {
                pager,
                stalled_since: HashMap::new(),
                page: Box::new([0; PAGE_SIZE as usize]),
            })),
        }
    }

    /// The VMM's hook; it shares this pager.
    pub fn handler(&self) -> Box<dyn NotResidentHandler> {
        Box::new(self.clone())
    }

    /// What the pager did so far.
    pub fn metrics(&self) -> PagerMetrics {
        self.state.borrow().pager.metrics()
    }
}

fn ipa_of(pfn: u64) -> u64 {
    pfn * PAGE_SIZE
}

impl State {
    fn read_guest_page(&mut self, residency: &dyn Residency, pfn: u64) -> Result<(), String> {
        residency
            .guest_memory()
            .read_slice(&mut self.page[..], GuestAddress(ipa_of(pfn)))
            .map_err(|e| format!("reading guest page {:#x}: {e}", ipa_of(pfn)))
    }

    fn write_guest_page(&self, residency: &dyn Residency, pfn: u64) -> Result<(), String> {
        residency
            .guest_memory()
            .write_slice(&self.page[..], GuestAddress(ipa_of(pfn)))
            .map_err(|e| format!("writing guest page {:#x}: {e}", ipa_of(pfn)))
    }
}

impl NotResidentHandler for FarMemory {
    fn init(&mut self, residency: &mut dyn Residency) -> Result<(), String> {
        let mut s = self.state.borrow_mut();
        let range = s.pager.range();
        let resident: Vec<u64> = s.pager.initially_resident();
        let mut next = resident.iter().copied().peekable();
        for pfn in (0..range.pages).map(|i| range.pfn(i as usize)) {
            if next.peek() == Some(&pfn) {
                next.next();
                let State { pager, page, .. } = &mut *s;
                pager
                    .read_initial(pfn, &mut page[..])
                    .map_err(|e| e.to_string())?;
                s.write_guest_page(residency, pfn)?;
            } else {
                residency
                    .set_resident(ipa_of(pfn), false)
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }

    fn on_fault(
        &mut self,
        vcpu: u32,
        fault: &NotResidentFault,
        now_ns: u64,
        residency: &mut dyn Residency,
    ) -> FaultDecision {
        let mut s = self.state.borrow_mut();
        let pfn = fault.ipa / PAGE_SIZE;
        if !s.pager.range().contains(pfn) {
            return FaultDecision::Fail(format!(
                "guest page {:#x} is absent but outside the pager's range",
                fault.ipa
            ));
        }
        let access = if fault.write {
            Access::Write
        } else {
            Access::Read
        };
        let plan = match s.pager.fault(pfn, access, now_ns) {
            Ok(plan) => plan,
            Err(e) => return FaultDecision::Fail(e.to_string()),
        };
        let until = match plan {
            FaultPlan::Resident => {
                return match residency.set_resident(fault.ipa, true) {
                    Ok(()) => FaultDecision::Retry,
                    Err(e) => FaultDecision::Fail(e.to_string()),
                };
            }
            FaultPlan::Fetch {
                ready_at_ns,
                evicted,
            } => {
                if let Some(ev) = evicted {
                    if let Err(e) = residency.set_resident(ipa_of(ev.pfn), false) {
                        return FaultDecision::Fail(e.to_string());
                    }
                    if ev.write_back {
                        let written = s.read_guest_page(residency, ev.pfn).and_then(|()| {
                            let State { pager, page, .. } = &mut *s;
                            pager
                                .write_back(ev.pfn, &page[..], now_ns)
                                .map_err(|e| e.to_string())
                        });
                        if let Err(e) = written {
                            return FaultDecision::Fail(e);
                        }
                    }
                }
                ready_at_ns
            }
            FaultPlan::Joined { ready_at_ns } => ready_at_ns,
            FaultPlan::NoFrame { retry_at_ns } => retry_at_ns,
        };
        s.stalled_since.entry(vcpu).or_insert(now_ns);
        FaultDecision::StallUntil(until)
    }

    fn on_stall_end(
        &mut self,
        vcpu: u32,
        fault: &NotResidentFault,
        now_ns: u64,
        residency: &mut dyn Residency,
    ) -> Result<(), String> {
        let mut s = self.state.borrow_mut();
        if let Some(since) = s.stalled_since.remove(&vcpu) {
            s.pager
                .record_stall(vcpu as usize, now_ns.saturating_sub(since));
        }
        let pfn = fault.ipa / PAGE_SIZE;
        // The first waiter whose stall ends installs the page; a vCPU that
        // joined the fetch, or waited for a free frame, finds it either
        // resident or still absent, and its retry faults again if needed.
        if s.pager.fetch_ready_at(pfn).is_some_and(|due| due <= now_ns) {
            let State { pager, page, .. } = &mut *s;
            pager
                .complete(pfn, &mut page[..])
                .map_err(|e| e.to_string())?;
            s.write_guest_page(residency, pfn)?;
            residency
                .set_resident(fault.ipa, true)
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}
