//! The one set of fault metrics of a run, kept by the engine whichever
//! backend drives it, and written to the results under `apf`.

use std::collections::BTreeMap;

use serde::Serialize;

/// Buckets of [`FaultMetrics::token_latency_log2_us`]: bucket `i` counts
/// latencies in `[2^i, 2^(i+1))` µs (bucket 0 also holds those below 1 µs).
pub const LATENCY_BUCKETS: usize = 24;

/// What the engine counted.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FaultMetrics {
    /// Not-resident faults reported by the backend.
    pub faults: u64,
    /// Faults served synchronously (the vCPU stalled), for whatever reason.
    pub sync_faults: u64,
    /// Faults served asynchronously (a token was handed to the guest).
    pub async_faults: u64,
    /// Async decisions served synchronously, by cause.
    pub fallbacks: BTreeMap<String, u64>,
    /// Decisions asked of the policy (one per fault).
    pub policy_calls: u64,
    /// Completed fetches reported to the policy (`on_complete`), sync and
    /// async.
    pub completions: u64,
    /// "Not present" injected, by delivery (`data_abort`, `dedicated_ec`,
    /// `sdei`).
    pub not_present: BTreeMap<String, u64>,
    /// `APF_PAGE_REQUEST`s that started a fetch.
    pub page_requests: u64,
    /// Tokens whose page came in.
    pub fetches_done: u64,
    /// Tokens put into a ready ring.
    pub ready_pushed: u64,
    /// Tokens the guest consumed (ready delivered).
    pub ready_delivered: u64,
    /// Tokens delivered as a "page ready" exception.
    pub ready_exceptions: u64,
    /// Times a vCPU resumed with a "page ready" exception held for it but
    /// could not take it there (not at EL0 nor in a marked wait, or its
    /// last notification not yet read), so it stayed held.
    pub ready_exception_held: u64,
    /// Times the ready PPI was raised.
    pub ready_interrupts: u64,
    /// `APF_ACK`s accepted.
    pub acks: u64,
    /// Tokens consumed per accepted ACK: `tokens_per_ack[n]` counts ACKs
    /// that consumed `n` tokens (index 64 and up are folded into 64).
    pub tokens_per_ack: BTreeMap<u32, u64>,
    /// `APF_DISABLE`s, each waking every sleeper of its vCPU.
    pub wake_alls: u64,
    /// Tokens dropped by a disable before the guest consumed them.
    pub tokens_dropped: u64,
    /// Per vCPU: most tokens outstanding at once.
    pub outstanding_high_water: Vec<u32>,
    /// Guest misuse of the protocol, by kind; each call got an SMCCC error.
    pub violations: BTreeMap<String, u64>,
    /// Token latency (fault to consumed), log2 µs buckets.
    pub token_latency_log2_us: Vec<u64>,
    /// Per vCPU: ns stalled on not-resident pages (virtual on emu, host
    /// time on kvm).
    pub stalled_ns: Vec<u64>,
}

impl FaultMetrics {
    /// Metrics of a run with `vcpus` vCPUs, all zero.
    pub fn new(vcpus: u32) -> Self {
        FaultMetrics {
            stalled_ns: vec![0; vcpus as usize],
            outstanding_high_water: vec![0; vcpus as usize],
            token_latency_log2_us: vec![0; LATENCY_BUCKETS],
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

    /// Counts one of `kind` in `map`.
    pub(crate) fn count(map: &mut BTreeMap<String, u64>, kind: &str) {
        *map.entry(kind.to_owned()).or_default() += 1;
    }

    /// Notes `n` tokens outstanding on `vcpu`.
    pub(crate) fn outstanding(&mut self, vcpu: u32, n: usize) {
        let i = vcpu as usize;
        if self.outstanding_high_water.len() <= i {
            self.outstanding_high_water.resize(i + 1, 0);
        }
        let hw = &mut self.outstanding_high_water[i];
        *hw = (*hw).max(n as u32);
    }

    /// Adds one token latency of `ns`.
    pub(crate) fn token_latency(&mut self, ns: u64) {
        let us = ns / 1000;
        let bucket = if us == 0 { 0 } else { us.ilog2() as usize };
        self.token_latency_log2_us[bucket.min(LATENCY_BUCKETS - 1)] += 1;
    }
}
