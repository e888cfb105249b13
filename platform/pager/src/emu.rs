//! The emu half: far memory in virtual time.
//!
//! The emu backend runs every vCPU on one thread, so [`VirtualPager`] is a
//! plain single-threaded object. A fault is decided at once
//! ([`VirtualPager::fault`]): the page's content is read from the store
//! (retries cost more modeled latency) and staged, and the plan says when
//! the fetch completes in virtual time and which page must leave guest
//! memory now. When virtual time reaches `ready_at_ns`, the backend calls
//! [`VirtualPager::complete`] to copy the staged content into guest memory.

use std::collections::HashMap;
use std::sync::Arc;

use apflab_abi::memory_map::PAGE_SIZE;

use crate::config::{ArmedAt, ManagedRange};
use crate::engine::{Access, Begin, Eviction, FaultEngine, PagerError, Prepared};
use crate::metrics::{BootPointArming, PagerMetrics};
use crate::residency::PageState;
use crate::store::{Page, Store};

/// What the backend does with a faulting access.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultPlan {
    /// The page is resident; the backend's mapping was stale. Map it and
    /// resume (no fetch, no delay).
    Resident,
    /// A fetch was started. Remove `evicted` from the guest mapping now
    /// (and hand its content to [`VirtualPager::write_back`] if it says
    /// so), then at `ready_at_ns` call [`VirtualPager::complete`].
    Fetch {
        /// Virtual time at which the page is in.
        ready_at_ns: u64,
        /// The page that gave up its frame.
        evicted: Option<Eviction>,
    },
    /// The page's fetch was already started by an earlier fault; it is in
    /// at `ready_at_ns` (the earlier fault's `complete` installs it).
    Joined {
        /// Virtual time at which the page is in.
        ready_at_ns: u64,
    },
    /// Every frame under the resident limit is held by a fetch in flight:
    /// call [`VirtualPager::fault`] again at `retry_at_ns`.
    NoFrame {
        /// When the earliest fetch in flight completes.
        retry_at_ns: u64,
    },
}

/// Far memory in virtual time for the emu backend.
pub struct VirtualPager {
    engine: FaultEngine,
    store: Arc<dyn Store>,
    /// Fetched content waiting for `complete`, with the strongest access
    /// that faulted on it.
    staged: HashMap<u64, (Box<Page>, Access)>,
    /// Page buffers for reuse, so a fault does not allocate.
    spare: Vec<Box<Page>>,
    armed_at: ArmedAt,
    /// With [`ArmedAt::BootPoint`]: what happened there.
    boot_point: Option<BootPointArming>,
}

impl VirtualPager {
    /// Builds the pager; the initially resident set is chosen here.
    pub fn new(prepared: Prepared) -> Self {
        let armed_at = prepared.config.armed_at;
        VirtualPager {
            engine: FaultEngine::new(&prepared),
            store: prepared.store,
            staged: HashMap::new(),
            spare: Vec::new(),
            armed_at,
            boot_point: (armed_at == ArmedAt::BootPoint).then(BootPointArming::default),
        }
    }

    /// The managed range (pages outside it are always resident).
    pub fn range(&self) -> ManagedRange {
        self.engine.range()
    }

    /// Managed pages resident at boot, in address order. Before the guest
    /// starts, the backend fills each with [`VirtualPager::read_initial`]
    /// and marks every other managed page absent.
    pub fn initially_resident(&self) -> Vec<u64> {
        self.engine.resident_pfns()
    }

    /// When far memory starts withholding pages. With
    /// [`ArmedAt::BootPoint`], the backend fills every managed page from
    /// the store before the guest starts, withholds none, and at the boot
    /// point hands each page outside [`VirtualPager::initially_resident`]
    /// to [`VirtualPager::withhold_at_boot_point`] and marks it absent.
    pub fn armed_at(&self) -> ArmedAt {
        self.armed_at
    }

    /// Withholds managed page `pfn`, whose content is `data` at the boot
    /// point ([`VirtualPager::reached_boot_point`]): the store keeps `data`
    /// if it differs from the store's own page. This is the experiment's
    /// set-up, so it is no write-back in the metrics. A store read that
    /// fails counts as different content.
    pub fn withhold_at_boot_point(&mut self, pfn: u64, data: &[u8]) -> Result<(), PagerError> {
        let data: &Page = data.try_into().map_err(|_| PagerError::Protocol {
            pfn,
            what: "a page withheld at the boot point is not exactly one page",
        })?;
        let Some(arming) = &mut self.boot_point else {
            return Err(PagerError::Protocol {
                pfn,
                what: "a page withheld at the boot point, and far memory starts at power-on",
            });
        };
        if self.engine.is_resident(pfn) {
            return Err(PagerError::Protocol {
                pfn,
                what: "an initially resident page withheld at the boot point",
            });
        }
        arming.pages_withheld += 1;
        let mut stored = self
            .spare
            .pop()
            .unwrap_or_else(|| Box::new([0; PAGE_SIZE as usize]));
        let same = self.store.read_page(pfn, &mut stored).is_ok() && stored[..] == data[..];
        self.spare.push(stored);
        if !same {
            arming.pages_stored += 1;
            self.store
                .write_page(pfn, data)
                .map_err(|source| PagerError::WriteBack { pfn, source })?;
        }
        Ok(())
    }

    /// Records that the boot point came at `now_ns` (also when it
    /// withheld no page).
    pub fn reached_boot_point(&mut self, now_ns: u64) {
        if let Some(arming) = &mut self.boot_point {
            arming.at_ns = Some(now_ns);
        }
    }

    /// Content of an initially resident page, from the store.
    pub fn read_initial(&self, pfn: u64, out: &mut [u8]) -> Result<(), PagerError> {
        let out = page_mut(pfn, out)?;
        FaultEngine::read_with_retries(self.engine.retries(), &*self.store, pfn, out)?;
        Ok(())
    }

    /// Whether `pfn` is a managed page that is resident now.
    pub fn is_resident(&self, pfn: u64) -> bool {
        self.engine.is_resident(pfn)
    }

    /// When the fetch of `pfn` in flight completes, so that
    /// [`VirtualPager::complete`] may be called (`None` if none is).
    pub fn fetch_ready_at(&self, pfn: u64) -> Option<u64> {
        self.engine.fetch_ready_at(pfn)
    }

    /// A guest access to non-resident page `pfn` at virtual time `now_ns`.
    ///
    /// A store error that retries cannot fix is returned naming the page;
    /// nothing changes in that case (no eviction, nothing staged).
    pub fn fault(
        &mut self,
        pfn: u64,
        access: Access,
        now_ns: u64,
    ) -> Result<FaultPlan, PagerError> {
        let i = self.engine.range().index(pfn);
        if i.is_some_and(|i| self.engine.residency().state(i) == PageState::Absent) {
            // Read before committing to an eviction, so a failed read
            // leaves residency untouched.
            let mut buf = self
                .spare
                .pop()
                .unwrap_or_else(|| Box::new([0; PAGE_SIZE as usize]));
            let attempts = match FaultEngine::read_with_retries(
                self.engine.retries(),
                &*self.store,
                pfn,
                &mut buf,
            ) {
                Ok(a) => a,
                Err(e) => {
                    self.spare.push(buf);
                    return Err(e);
                }
            };
            match self.engine.begin(pfn, now_ns)? {
                Begin::Fetch { evicted } => {
                    let latency = self.engine.sample_latencies(attempts);
                    let ready_at_ns = self.engine.schedule(pfn, now_ns, attempts, latency);
                    self.staged.insert(pfn, (buf, access));
                    Ok(FaultPlan::Fetch {
                        ready_at_ns,
                        evicted,
                    })
                }
                Begin::NoFrame { retry_at_ns } => {
                    self.spare.push(buf);
                    Ok(FaultPlan::NoFrame { retry_at_ns })
                }
                // An absent page is never resident or in flight.
                other => {
                    self.spare.push(buf);
                    self.plan_for(pfn, access, other)
                }
            }
        } else {
            let begin = self.engine.begin(pfn, now_ns)?;
            self.plan_for(pfn, access, begin)
        }
    }

    fn plan_for(
        &mut self,
        pfn: u64,
        access: Access,
        begin: Begin,
    ) -> Result<FaultPlan, PagerError> {
        Ok(match begin {
            Begin::Resident => FaultPlan::Resident,
            Begin::InFlight { ready_at_ns } => {
                if access == Access::Write
                    && let Some((_, a)) = self.staged.get_mut(&pfn)
                {
                    *a = Access::Write;
                }
                FaultPlan::Joined { ready_at_ns }
            }
            Begin::NoFrame { retry_at_ns } => FaultPlan::NoFrame { retry_at_ns },
            Begin::Fetch { .. } => {
                return Err(PagerError::Protocol {
                    pfn,
                    what: "a fetch began for a page that was not absent",
                });
            }
        })
    }

    /// The fetch of `pfn` is due: copies its content into `page_out` (the
    /// guest page, 4096 bytes) and marks it resident. The backend then maps
    /// it and resumes whoever waits for it.
    pub fn complete(&mut self, pfn: u64, page_out: &mut [u8]) -> Result<(), PagerError> {
        let out = page_mut(pfn, page_out)?;
        let (buf, access) = self.staged.remove(&pfn).ok_or(PagerError::Protocol {
            pfn,
            what: "completed a page that was not being fetched",
        })?;
        self.engine.complete(pfn, access)?;
        out.copy_from_slice(&buf[..]);
        self.spare.push(buf);
        Ok(())
    }

    /// Hands back the content of an evicted page whose [`Eviction`] said
    /// `write_back` (the backend has already unmapped it).
    pub fn write_back(&mut self, pfn: u64, data: &[u8], now_ns: u64) -> Result<(), PagerError> {
        let data: &Page = data.try_into().map_err(|_| PagerError::Protocol {
            pfn,
            what: "write-back data is not exactly one page",
        })?;
        self.engine.written_back(pfn, now_ns)?;
        self.store
            .write_page(pfn, data)
            .map_err(|source| PagerError::WriteBack { pfn, source })
    }

    /// Hint: `pfn` was accessed (improves CLOCK's choices).
    pub fn note_access(&mut self, pfn: u64) {
        self.engine.note_access(pfn);
    }

    /// Hint: `pfn` was written (with `dirty_tracking = "hinted"`).
    pub fn mark_dirty(&mut self, pfn: u64) {
        self.engine.mark_dirty(pfn);
    }

    /// `vcpu` stalled `ns` waiting for a page.
    pub fn record_stall(&mut self, vcpu: usize, ns: u64) {
        self.engine.record_stall(vcpu, ns);
    }

    /// Frames in use now (resident + in flight).
    pub fn frames_in_use(&self) -> usize {
        self.engine.residency().used()
    }

    /// Metrics so far.
    pub fn metrics(&self) -> PagerMetrics {
        PagerMetrics {
            boot_point: self.boot_point.clone(),
            ..self.engine.metrics()
        }
    }
}

fn page_mut(pfn: u64, buf: &mut [u8]) -> Result<&mut Page, PagerError> {
    buf.try_into().map_err(|_| PagerError::Protocol {
        pfn,
        what: "page buffer is not exactly one page",
    })
}
