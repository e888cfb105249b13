//! The decisions both backends share: which page is fetched, which one is
//! evicted, when the fetch is ready; plus the store reads with retries.
//!
//! [`FaultEngine`] is pure bookkeeping over one clock (virtual or monotonic
//! nanoseconds); it never touches guest memory. The emu half
//! ([`crate::VirtualPager`]) and the kvm half ([`crate::uffd::UffdPager`])
//! wrap it.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use apflab_abi::memory_map::PAGE_SIZE;
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;

use crate::config::{ConfigError, DirtyTracking, ManagedRange, PagerConfig, StoreConfig};
use crate::latency::{FetchTimeline, LatencyModel};
use crate::metrics::{MetricsRecorder, PagerMetrics};
use crate::residency::{PageState, Residency};
use crate::store::{
    FaultInjectingStore, FileStore, Page, Store, StoreError, SyntheticStore, ZeroStore,
};

/// A validated `[pager]` config with its files opened: what both halves
/// are built from.
pub struct Prepared {
    /// The config it came from.
    pub config: PagerConfig,
    /// Managed guest pages.
    pub range: ManagedRange,
    /// The store.
    pub store: Arc<dyn Store>,
    /// The latency distribution.
    pub latency: LatencyModel,
}

impl Prepared {
    /// Validates `config` for a guest with `guest_ram_bytes` of RAM, opens
    /// the image and samples files (relative paths from `base_dir`, the
    /// config file's directory).
    pub fn new(
        config: &PagerConfig,
        guest_ram_bytes: u64,
        base_dir: &Path,
    ) -> Result<Self, ConfigError> {
        Self::new_above(
            config,
            apflab_abi::boot::WORKLOAD_REGION_OFFSET,
            guest_ram_bytes,
            base_dir,
        )
    }

    /// [`Self::new`] for a pager that manages RAM from `low` bytes above its
    /// start (a Linux guest: past its kernel, device tree and initrd).
    pub fn new_above(
        config: &PagerConfig,
        low: u64,
        guest_ram_bytes: u64,
        base_dir: &Path,
    ) -> Result<Self, ConfigError> {
        let range = config.validate_above(low, guest_ram_bytes)?;
        let store: Arc<dyn Store> = match config.store {
            StoreConfig::Zero {} => Arc::new(ZeroStore::new()),
            StoreConfig::Synthetic { seed } => Arc::new(SyntheticStore::new(seed)),
            StoreConfig::File { ref path } => {
                let path = base_dir.join(path);
                let store = FileStore::open(&path, guest_ram_bytes).map_err(|source| {
                    ConfigError::File {
                        key: "store.path",
                        path,
                        source,
                    }
                })?;
                Arc::new(store)
            }
        };
        let store = match &config.inject_errors {
            Some(i) => Arc::new(
                FaultInjectingStore::new(
                    store,
                    i.transient_every,
                    i.permanent.iter().map(|a| a / PAGE_SIZE).collect(),
                )
                .corrupting_every(i.corrupt_every),
            ),
            None => store,
        };
        let latency = LatencyModel::from_config(&config.latency, base_dir)?;
        Ok(Prepared {
            config: config.clone(),
            range,
            store,
            latency,
        })
    }

    /// Replaces the store (a fault-injecting wrapper, a remote store).
    pub fn with_store(mut self, store: Arc<dyn Store>) -> Self {
        self.store = store;
        self
    }
}

/// A fault the pager could not serve. The VM must stop: the guest page is
/// named, and no page was installed in its place.
#[derive(Debug, thiserror::Error)]
pub enum PagerError {
    /// The store failed permanently, or transiently more often than
    /// `retries` allows.
    #[error("cannot fetch guest page {pfn:#x} (guest physical {addr:#x}) after {attempts} attempt(s): {source}", addr = pfn * PAGE_SIZE)]
    Fetch {
        /// Guest page frame.
        pfn: u64,
        /// Reads tried.
        attempts: u32,
        /// The last store error.
        source: StoreError,
    },
    /// Writing an evicted page back failed: its content is lost.
    #[error("cannot write back guest page {pfn:#x}: {source}")]
    WriteBack {
        /// Guest page frame.
        pfn: u64,
        /// The store error.
        source: StoreError,
    },
    /// The backend asked about a page outside the workload region.
    #[error(
        "guest page {pfn:#x} is not managed by the pager (workload region is {first:#x}..{end:#x})"
    )]
    NotManaged {
        /// Guest page frame.
        pfn: u64,
        /// First managed frame.
        first: u64,
        /// One past the last managed frame.
        end: u64,
    },
    /// The host interface pages are served through failed (a userfaultfd
    /// read or ioctl): the pages it was serving stay absent.
    #[error("{what}: {source}")]
    Host {
        /// Which operation.
        what: &'static str,
        /// The host's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Serving one guest page through the host interface failed.
    #[error("{what}: guest page {pfn:#x}: {source}")]
    HostPage {
        /// Which operation.
        what: &'static str,
        /// Guest page frame.
        pfn: u64,
        /// The host's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The backend broke the protocol (a call out of order); a VMM bug.
    #[error("guest page {pfn:#x}: {what}")]
    Protocol {
        /// Guest page frame.
        pfn: u64,
        /// What was out of order.
        what: &'static str,
    },
}

/// Kind of access that faulted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Load or instruction fetch.
    Read,
    /// Store (the page will be dirty once installed).
    Write,
}

/// A page leaving guest memory to make room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Eviction {
    /// Guest page frame to remove from the guest mapping now.
    pub pfn: u64,
    /// Whether its current content must be handed back with `write_back`
    /// before the page can be fetched again.
    pub write_back: bool,
}

/// What happens to a faulting access, decided by [`FaultEngine::begin`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Begin {
    /// Already resident: the backend's mapping was stale; map it again.
    Resident,
    /// Another fault already started this page's fetch, ready then.
    InFlight {
        /// When the page is ready.
        ready_at_ns: u64,
    },
    /// Every frame is held by a fetch in flight; ask again at this time.
    NoFrame {
        /// Earliest time a fetch in flight completes.
        retry_at_ns: u64,
    },
    /// A new fetch holds a frame for the page; read the store, then
    /// [`FaultEngine::schedule`].
    Fetch {
        /// Page that gave up its frame, if any.
        evicted: Option<Eviction>,
    },
}

/// The shared decision core: residency, timeline, latency sampling and
/// metrics.
pub struct FaultEngine {
    range: ManagedRange,
    residency: Residency,
    timeline: FetchTimeline,
    latency: LatencyModel,
    rng: ChaCha8Rng,
    dirty_tracking: DirtyTracking,
    retries: u32,
    /// Every n-th fetch takes this much longer, ns (`inject_errors`).
    spike: Option<(u64, u64)>,
    /// Fetches whose latency was drawn.
    fetches_drawn: u64,
    /// Ready time of every fetch in flight, by page index.
    in_flight: HashMap<usize, u64>,
    /// Pages evicted whose content the backend has not handed back yet.
    write_back_pending: HashSet<usize>,
    metrics: MetricsRecorder,
}

impl FaultEngine {
    /// Builds the engine; the initially resident pages are chosen here
    /// (see [`FaultEngine::resident_pfns`]).
    pub fn new(p: &Prepared) -> Self {
        let c = &p.config;
        let pages = p.range.pages as usize;
        let limit = c
            .resident_limit
            .map_or(pages, |l| (l.0 / PAGE_SIZE) as usize);
        let mut rng = ChaCha8Rng::seed_from_u64(c.seed);
        let mut residency = Residency::new(pages, limit, c.eviction);
        let initial =
            ((pages as f64 * c.initially_resident).round() as usize).min(residency.limit());
        // A seeded random subset, populated in address order so CLOCK's
        // hand starts from a deterministic state.
        let mut chosen = sample(&mut rng, pages, initial).into_vec();
        chosen.sort_unstable();
        for i in chosen {
            residency.populate(i);
        }
        let mut metrics = MetricsRecorder::default();
        metrics.counters.store = p.store.describe();
        metrics.counters.managed_pages = pages as u64;
        metrics.counters.resident_limit_pages = residency.limit() as u64;
        metrics.counters.initially_resident_pages = residency.resident() as u64;
        FaultEngine {
            range: p.range,
            residency,
            timeline: FetchTimeline::new(c.queue_depth, c.bandwidth_bytes_per_sec),
            latency: p.latency.clone(),
            rng,
            dirty_tracking: c.dirty_tracking,
            retries: c.retries,
            spike: c
                .inject_errors
                .as_ref()
                .filter(|i| i.spike_every > 0)
                .map(|i| (i.spike_every, i.spike_us.saturating_mul(1_000))),
            fetches_drawn: 0,
            in_flight: HashMap::new(),
            write_back_pending: HashSet::new(),
            metrics,
        }
    }

    /// The managed range.
    pub fn range(&self) -> ManagedRange {
        self.range
    }

    /// Residency (read-only).
    pub fn residency(&self) -> &Residency {
        &self.residency
    }

    /// Pages resident at this moment, in address order (at boot: the ones
    /// the backend must fill from the store before the guest starts).
    pub fn resident_pfns(&self) -> Vec<u64> {
        (0..self.residency.pages())
            .filter(|&i| self.residency.state(i) == PageState::Resident)
            .map(|i| self.range.pfn(i))
            .collect()
    }

    /// Whether managed page `pfn` is resident (false for unmanaged pages,
    /// which the pager never withholds: check [`ManagedRange::contains`]).
    pub fn is_resident(&self, pfn: u64) -> bool {
        self.range
            .index(pfn)
            .is_some_and(|i| self.residency.state(i) == PageState::Resident)
    }

    /// When the fetch of `pfn` in flight completes (`None` if none is).
    pub fn fetch_ready_at(&self, pfn: u64) -> Option<u64> {
        self.range
            .index(pfn)
            .and_then(|i| self.in_flight.get(&i).copied())
    }

    fn index(&self, pfn: u64) -> Result<usize, PagerError> {
        self.range.index(pfn).ok_or(PagerError::NotManaged {
            pfn,
            first: self.range.first_pfn,
            end: self.range.first_pfn + self.range.pages,
        })
    }

    /// First step of a fault on `pfn` at `now_ns`.
    pub fn begin(&mut self, pfn: u64, now_ns: u64) -> Result<Begin, PagerError> {
        let i = self.index(pfn)?;
        match self.residency.state(i) {
            PageState::Resident => {
                self.metrics.counters.spurious += 1;
                Ok(Begin::Resident)
            }
            PageState::InFlight => {
                self.metrics.counters.joined_in_flight += 1;
                let ready_at_ns = self.in_flight.get(&i).copied().unwrap_or(now_ns);
                Ok(Begin::InFlight { ready_at_ns })
            }
            PageState::Absent => {
                if self.write_back_pending.contains(&i) {
                    return Err(PagerError::Protocol {
                        pfn,
                        what: "fault on an evicted page before its write-back",
                    });
                }
                match self.residency.begin_fetch(i) {
                    Ok(victim) => {
                        // Reserve the page now so a second fault joins it
                        // even before `schedule` gives the ready time.
                        self.in_flight.insert(i, u64::MAX);
                        let evicted = victim.map(|v| {
                            self.metrics.counters.evictions += 1;
                            let write_back = match self.dirty_tracking {
                                DirtyTracking::Conservative => true,
                                DirtyTracking::Hinted => v.dirty,
                            };
                            if write_back {
                                self.write_back_pending.insert(v.index);
                            }
                            Eviction {
                                pfn: self.range.pfn(v.index),
                                write_back,
                            }
                        });
                        Ok(Begin::Fetch { evicted })
                    }
                    Err(_) => {
                        self.metrics.counters.no_frame_waits += 1;
                        let retry_at_ns = self
                            .in_flight
                            .values()
                            .copied()
                            .min()
                            .unwrap_or(now_ns)
                            .max(now_ns);
                        Ok(Begin::NoFrame { retry_at_ns })
                    }
                }
            }
        }
    }

    /// Draws one fetch latency (one attempt).
    #[inline]
    pub fn sample_latency(&mut self) -> u64 {
        self.latency.sample(&mut self.rng)
    }

    /// Draws the latencies of `attempts` store reads and sums them,
    /// saturating (a sum past `u64::MAX` ns is "never", not a wrapped,
    /// early time).
    /// Every `inject_errors.spike_every`-th fetch adds `spike_us`.
    pub fn sample_latencies(&mut self, attempts: u32) -> u64 {
        let sum = (0..attempts).fold(0u64, |sum, _| sum.saturating_add(self.sample_latency()));
        self.fetches_drawn += 1;
        match self.spike {
            Some((every, ns)) if self.fetches_drawn.is_multiple_of(every) => {
                self.metrics.counters.latency_spikes += 1;
                sum.saturating_add(ns)
            }
            _ => sum,
        }
    }

    /// Reads `pfn` from `store` into `out`, retrying transient errors up to
    /// the configured count. Returns the number of attempts made.
    pub fn read_with_retries(
        retries: u32,
        store: &dyn Store,
        pfn: u64,
        out: &mut Page,
    ) -> Result<u32, PagerError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match store.read_page(pfn, out) {
                Ok(()) => return Ok(attempts),
                Err(e) if e.is_transient() && attempts <= retries => {
                    tracing::debug!(pfn, attempts, error = %e, "retrying store read");
                }
                Err(source) => {
                    return Err(PagerError::Fetch {
                        pfn,
                        attempts,
                        source,
                    });
                }
            }
        }
    }

    /// Configured retries.
    pub fn retries(&self) -> u32 {
        self.retries
    }

    /// Second step of a fetch begun at `now_ns` that took `attempts` store
    /// reads of `latency_ns` in total: takes a fetch slot and the link, and
    /// returns when the page is ready.
    pub fn schedule(&mut self, pfn: u64, now_ns: u64, attempts: u32, latency_ns: u64) -> u64 {
        let times = self.timeline.schedule(now_ns, latency_ns);
        let c = &mut self.metrics.counters;
        c.fetches += 1;
        c.store_retries += u64::from(attempts.saturating_sub(1));
        if let Some(i) = self.range.index(pfn) {
            if self.residency.evicted_before(i) {
                c.refaults += 1;
            }
            self.in_flight.insert(i, times.ready_ns);
        }
        self.metrics
            .record_latency(times.ready_ns.saturating_sub(now_ns));
        times.ready_ns
    }

    /// The page is installed in guest memory (dirty if the faulting access
    /// was a write).
    pub fn complete(&mut self, pfn: u64, access: Access) -> Result<(), PagerError> {
        let i = self.index(pfn)?;
        if self.in_flight.remove(&i).is_none() {
            return Err(PagerError::Protocol {
                pfn,
                what: "completed a page that was not being fetched",
            });
        }
        self.residency.install(i, access == Access::Write);
        Ok(())
    }

    /// The content of evicted page `pfn` was written back at `now_ns`.
    pub fn written_back(&mut self, pfn: u64, now_ns: u64) -> Result<(), PagerError> {
        let i = self.index(pfn)?;
        if !self.write_back_pending.remove(&i) {
            return Err(PagerError::Protocol {
                pfn,
                what: "write-back of a page that was not evicted for write-back",
            });
        }
        self.timeline.write_back(now_ns);
        self.metrics.counters.write_backs += 1;
        Ok(())
    }

    /// Whether `pfn` was evicted for write-back and its content has not
    /// been handed back yet.
    pub fn write_back_pending(&self, pfn: u64) -> bool {
        self.range
            .index(pfn)
            .is_some_and(|i| self.write_back_pending.contains(&i))
    }

    /// Backend hint: `pfn` was accessed (CLOCK's referenced bit).
    #[inline]
    pub fn note_access(&mut self, pfn: u64) {
        if let Some(i) = self.range.index(pfn) {
            self.residency.note_access(i);
        }
    }

    /// Backend hint: `pfn` was written (for hinted dirty tracking).
    #[inline]
    pub fn mark_dirty(&mut self, pfn: u64) {
        if let Some(i) = self.range.index(pfn) {
            self.residency.mark_dirty(i);
        }
    }

    /// Adds `ns` of stall to `vcpu`.
    pub fn record_stall(&mut self, vcpu: usize, ns: u64) {
        self.metrics.record_stall(vcpu, ns);
    }

    /// Metrics so far.
    pub fn metrics(&self) -> PagerMetrics {
        self.metrics.snapshot(self.residency.high_water())
    }
}
