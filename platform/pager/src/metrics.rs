//! What the pager did, for the results JSON.

use apflab_abi::memory_map::PAGE_SIZE;
use hdrhistogram::Histogram;
use serde::Serialize;

/// Summary of the fetch latency histogram, in nanoseconds (request to page
/// ready, including queueing, bandwidth and retries).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Fetches recorded.
    pub count: u64,
    /// Mean.
    pub mean_ns: f64,
    /// Median.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// Largest (exact; the percentiles are within 0.1%).
    pub max_ns: u64,
}

/// Counters of one run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PagerMetrics {
    /// Description of the store (`synthetic(seed=7)`).
    pub store: String,
    /// Managed pages (the workload region).
    pub managed_pages: u64,
    /// Frame limit in pages.
    pub resident_limit_pages: u64,
    /// Pages resident at boot.
    pub initially_resident_pages: u64,
    /// Pages fetched from the store.
    pub fetches: u64,
    /// Fetches of pages that had been evicted before.
    pub refaults: u64,
    /// Faults on a page whose fetch was already in flight (no new fetch).
    pub joined_in_flight: u64,
    /// Faults on a page that was already resident (stale backend mapping).
    pub spurious: u64,
    /// Faults that found every frame held by a fetch in flight and waited.
    pub no_frame_waits: u64,
    /// Pages evicted.
    pub evictions: u64,
    /// Evicted pages written back to the store.
    pub write_backs: u64,
    /// Store reads retried after a transient error.
    pub store_retries: u64,
    /// Fetches given an injected latency spike (`inject_errors.spike_every`).
    pub latency_spikes: u64,
    /// Bytes fetched from the store.
    pub bytes_fetched: u64,
    /// Bytes written back.
    pub bytes_written_back: u64,
    /// `bytes_fetched + bytes_written_back`.
    pub bytes_moved: u64,
    /// Most frames in use at once.
    pub resident_high_water_pages: u64,
    /// The same in bytes.
    pub resident_high_water_bytes: u64,
    /// Fetch latency.
    pub fetch_latency: LatencySummary,
    /// Per vCPU: nanoseconds it stalled waiting for pages (as accounted by
    /// the backend).
    pub stalled_ns: Vec<u64>,
    /// With `armed_at = "boot-point"`: when far memory started. Left out
    /// otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot_point: Option<BootPointArming>,
}

/// Far memory started at the guest's boot point (`armed_at = "boot-point"`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BootPointArming {
    /// Virtual time of the boot point; `None` if the guest never reached
    /// it, so far memory never started.
    pub at_ns: Option<u64>,
    /// Managed pages withheld then.
    pub pages_withheld: u64,
    /// Of those, pages whose content the boot had changed, moved into the
    /// store (the others the store already held as they were).
    pub pages_stored: u64,
}

/// Collects counters and the latency histogram during a run.
#[derive(Clone, Debug)]
pub struct MetricsRecorder {
    /// Counters (latency summary and high water filled in by `snapshot`).
    pub counters: PagerMetrics,
    latency: Histogram<u64>,
    max_latency: u64,
}

impl Default for MetricsRecorder {
    fn default() -> Self {
        MetricsRecorder {
            counters: PagerMetrics::default(),
            // Three significant digits, auto-resizing: any latency fits.
            latency: Histogram::new(3).expect("3 significant figures is a valid precision"),
            max_latency: 0,
        }
    }
}

impl MetricsRecorder {
    /// Records one fetch's latency.
    #[inline]
    pub fn record_latency(&mut self, ns: u64) {
        self.max_latency = self.max_latency.max(ns);
        // The histogram grows to fit; only a value beyond its largest
        // possible range fails, and is clamped.
        if self.latency.record(ns).is_err() {
            self.latency.saturating_record(ns);
        }
    }

    /// Adds stalled time to `vcpu`.
    pub fn record_stall(&mut self, vcpu: usize, ns: u64) {
        let s = &mut self.counters.stalled_ns;
        if s.len() <= vcpu {
            s.resize(vcpu + 1, 0);
        }
        s[vcpu] = s[vcpu].saturating_add(ns);
    }

    /// The metrics so far, with the given resident high-water mark.
    pub fn snapshot(&self, high_water_pages: usize) -> PagerMetrics {
        let mut m = self.counters.clone();
        m.bytes_fetched = m.fetches * PAGE_SIZE;
        m.bytes_written_back = m.write_backs * PAGE_SIZE;
        m.bytes_moved = m.bytes_fetched + m.bytes_written_back;
        m.resident_high_water_pages = high_water_pages as u64;
        m.resident_high_water_bytes = high_water_pages as u64 * PAGE_SIZE;
        let h = &self.latency;
        m.fetch_latency = if h.is_empty() {
            LatencySummary::default()
        } else {
            // The histogram answers with the top of a bucket (three
            // significant digits), which can lie above the largest latency
            // recorded; no percentile is reported above the exact maximum.
            let at = |q| h.value_at_quantile(q).min(self.max_latency);
            LatencySummary {
                count: h.len(),
                mean_ns: h.mean(),
                p50_ns: at(0.5),
                p90_ns: at(0.9),
                p99_ns: at(0.99),
                max_ns: self.max_latency,
            }
        };
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_summarises() {
        let mut r = MetricsRecorder::default();
        for ns in 1..=1000u64 {
            r.record_latency(ns * 1000);
        }
        r.counters.fetches = 10;
        r.counters.write_backs = 2;
        r.record_stall(2, 500);
        r.record_stall(2, 500);
        let m = r.snapshot(7);
        assert_eq!(m.bytes_moved, 12 * 4096);
        assert_eq!(m.stalled_ns, [0, 0, 1000]);
        assert_eq!(m.resident_high_water_bytes, 7 * 4096);
        let l = &m.fetch_latency;
        assert_eq!(l.count, 1000);
        assert!((l.p50_ns as f64 - 500_000.0).abs() < 1_000.0, "{l:?}");
        assert!((l.p99_ns as f64 - 990_000.0).abs() < 2_000.0, "{l:?}");
        assert_eq!(l.max_ns, 1_000_000);
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["fetch_latency"]["count"], 1000);
    }

    #[test]
    fn no_percentile_lies_above_the_maximum() {
        let mut r = MetricsRecorder::default();
        // 50 µs falls inside a histogram bucket whose top is above it.
        for _ in 0..10 {
            r.record_latency(50_000);
        }
        let l = r.snapshot(0).fetch_latency;
        assert_eq!((l.p50_ns, l.p99_ns, l.max_ns), (50_000, 50_000, 50_000));
    }
}
