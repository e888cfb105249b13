//! The page side of a fault: what the engine does to guest memory and to
//! the backend's residency when the pager ([`VirtualPager`]) decides.
//!
//! The pager decides which page leaves, whether it is written back and
//! when a fetch completes; this module applies those decisions: it unmaps
//! the victim, hands its bytes to the pager for write-back, and once a
//! fetch is due copies the page into guest memory and maps it. It is the
//! only place that sequence is written.

use apflab_abi::addr::{Gpa, Pfn};
use apflab_abi::memory_map::PAGE_SIZE;
use apflab_hypervisor::Residency;
use apflab_pager::{Access, ArmedAt, FaultPlan, PagerMetrics, VirtualPager};
use vm_memory::{Bytes, GuestAddress};

use crate::error::ApfError;

/// What the page side did about a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fetch {
    /// The page was resident already (a stale mapping): it is mapped now,
    /// the access can be retried at once.
    Mapped,
    /// The page is on its way (or waits for a free frame): call
    /// [`FarMemory::complete_due`] at this time, then retry.
    DueAt(u64),
}

/// The pager of a run and the page buffer its copies go through.
pub struct FarMemory {
    pager: VirtualPager,
    page: Box<[u8; PAGE_SIZE as usize]>,
}

impl FarMemory {
    /// Wraps a pager built from the run's `[pager]` section.
    pub fn new(pager: VirtualPager) -> Self {
        FarMemory {
            pager,
            page: Box::new([0; PAGE_SIZE as usize]),
        }
    }

    /// Fills the initially resident pages of the managed range from the
    /// store and marks every other one absent (post-copy start). With far
    /// memory armed at the boot point, fills every managed page and
    /// withholds none yet ([`FarMemory::arm_at_boot_point`] does that).
    pub fn init(&mut self, res: &mut dyn Residency) -> Result<(), ApfError> {
        let at_boot_point = self.pager.armed_at() == ArmedAt::BootPoint;
        for (pfn, initially_resident) in managed_pages(&self.pager) {
            if initially_resident || at_boot_point {
                self.pager.read_initial(pfn, &mut self.page[..])?;
                // Guest RAM above the loaded kernel is zero at power-on, so
                // a zero page that is not resident by the pager's choice
                // (all of a zero store's, armed at the boot point) needs no
                // write: the host's memory stays untouched. A resident one
                // is written, which is what populates a kvm memslot.
                if initially_resident || self.page.iter().any(|&b| b != 0) {
                    self.write_guest_page(res, Pfn(pfn))?;
                }
            } else {
                res.set_resident(Pfn(pfn).gpa(), false)?;
            }
        }
        Ok(())
    }

    /// The guest reached its boot point at `now_ns`: with far memory armed
    /// there, every managed page outside the initially resident set goes
    /// to the store with the content the boot left in it, and is withheld
    /// from the guest from now on. Nothing to do otherwise.
    pub fn arm_at_boot_point(
        &mut self,
        now_ns: u64,
        res: &mut dyn Residency,
    ) -> Result<(), ApfError> {
        if self.pager.armed_at() != ArmedAt::BootPoint {
            return Ok(());
        }
        self.pager.reached_boot_point(now_ns);
        for (pfn, initially_resident) in managed_pages(&self.pager) {
            if initially_resident {
                continue;
            }
            self.read_guest_page(res, Pfn(pfn))?;
            self.pager.withhold_at_boot_point(pfn, &self.page[..])?;
            res.set_resident(Pfn(pfn).gpa(), false)?;
        }
        Ok(())
    }

    /// A guest `access` at `now_ns` to the absent page holding `gpa`: asks
    /// the pager, and applies an eviction it orders at once.
    pub fn fault(
        &mut self,
        gpa: Gpa,
        access: Access,
        now_ns: u64,
        res: &mut dyn Residency,
    ) -> Result<Fetch, ApfError> {
        let pfn = gpa.pfn();
        if !self.pager.range().contains(pfn.0) {
            return Err(ApfError::OutsideRange(gpa));
        }
        Ok(match self.pager.fault(pfn.0, access, now_ns)? {
            FaultPlan::Resident => {
                res.set_resident(gpa, true)?;
                Fetch::Mapped
            }
            FaultPlan::Fetch {
                ready_at_ns,
                evicted,
            } => {
                if let Some(ev) = evicted {
                    res.set_resident(Pfn(ev.pfn).gpa(), false)?;
                    if ev.write_back {
                        self.read_guest_page(res, Pfn(ev.pfn))?;
                        self.pager.write_back(ev.pfn, &self.page[..], now_ns)?;
                    }
                }
                Fetch::DueAt(ready_at_ns)
            }
            FaultPlan::Joined { ready_at_ns } => Fetch::DueAt(ready_at_ns),
            FaultPlan::NoFrame { retry_at_ns } => Fetch::DueAt(retry_at_ns),
        })
    }

    /// Installs the page holding `gpa` if its fetch is due by `now_ns`. The
    /// first waiter whose wait ends installs it; one that joined the fetch,
    /// or waited for a free frame, finds it resident or still absent, and
    /// its retry faults again if needed.
    pub fn complete_due(
        &mut self,
        gpa: Gpa,
        now_ns: u64,
        res: &mut dyn Residency,
    ) -> Result<(), ApfError> {
        let pfn = gpa.pfn();
        if self
            .pager
            .fetch_ready_at(pfn.0)
            .is_some_and(|due| due <= now_ns)
        {
            self.pager.complete(pfn.0, &mut self.page[..])?;
            self.write_guest_page(res, pfn)?;
            res.set_resident(gpa, true)?;
        }
        Ok(())
    }

    /// Adds `ns` to the pager's stall metric of `vcpu`.
    pub fn record_stall(&mut self, vcpu: u32, ns: u64) {
        self.pager.record_stall(vcpu as usize, ns);
    }

    /// What the pager did so far.
    pub fn metrics(&self) -> PagerMetrics {
        self.pager.metrics()
    }

    /// The pager itself (read-only), e.g. for residency checks in tests.
    pub fn pager(&self) -> &VirtualPager {
        &self.pager
    }

    fn read_guest_page(&mut self, res: &dyn Residency, pfn: Pfn) -> Result<(), ApfError> {
        let gpa = pfn.gpa();
        res.guest_memory()
            .read_slice(&mut self.page[..], GuestAddress(gpa.0))
            .map_err(|source| ApfError::ReadPage { gpa, source })
    }

    fn write_guest_page(&self, res: &dyn Residency, pfn: Pfn) -> Result<(), ApfError> {
        let gpa = pfn.gpa();
        res.guest_memory()
            .write_slice(&self.page[..], GuestAddress(gpa.0))
            .map_err(|source| ApfError::WritePage { gpa, source })
    }
}

/// Every managed page of `pager`, in address order, with whether it is in
/// the pager's initially resident set.
fn managed_pages(pager: &VirtualPager) -> impl Iterator<Item = (u64, bool)> + use<> {
    let range = pager.range();
    let mut resident = pager.initially_resident().into_iter().peekable();
    (0..range.pages).map(move |i| {
        let pfn = range.pfn(i as usize);
        (pfn, resident.next_if_eq(&pfn).is_some())
    })
}
