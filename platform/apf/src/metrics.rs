//! The one set of fault metrics of a run, kept by the engine whichever
//! backend drives it.

/// What the engine counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultMetrics {
    /// Not-resident faults reported by the backend.
    pub faults: u64,
    /// Faults the policy decided to handle synchronously.
    pub sync_faults: u64,
    /// Faults the policy decided to handle asynchronously, which this
    /// engine still serves synchronously (the async protocol is not part of
    /// it yet).
    pub async_decisions_served_sync: u64,
    /// Faults whose decision asked for neighbouring pages, which are not
    /// prefetched yet.
    pub prefetch_requests_ignored: u64,
    /// Per vCPU: ns stalled on not-resident pages (virtual on emu, host
    /// time on kvm).
    pub stalled_ns: Vec<u64>,
}

impl FaultMetrics {
    /// Metrics of a run with `vcpus` vCPUs, all zero.
    pub fn new(vcpus: u32) -> Self {
        FaultMetrics {
            stalled_ns: vec![0; vcpus as usize],
            ..FaultMetrics::default()
        }
    }

    /// Adds a stall of `ns` to `vcpu`.
    pub(crate) fn add_stall(&mut self, vcpu: u32, ns: u64) {
        let i = vcpu as usize;
        if self.stalled_ns.len() <= i {
            self.stalled_ns.resize(i + 1, 0);
        }
        self.stalled_ns[i] = self.stalled_ns[i].saturating_add(ns);
    }
}
