//! The `kv` workload's schedule: open-loop arrivals (request `i` is due at
//! a fixed time whether or not earlier ones were served, so queueing shows
//! in the latency), the page each request touches, and the table's layout.
//!
//! As in the built-in guest, a gap between arrivals is uniform in
//! `[interval / 2, 3 * interval / 2)`, and the table is `mib` MiB of pages
//! whose word 0 counts the page's updates and whose other words hold the
//! page's pattern (version 1).

use apflab_abi::pattern::splitmix64;
use apflab_abi::report::{GuestReport, LATENCY_BUCKETS, LATENCY_FINE_BUCKETS};

use crate::memory;

/// The pattern version the table is written with.
pub const TABLE_VERSION: u32 = 1;

/// Due times of the requests, in nanoseconds after the first one's
/// reference time.
#[derive(Clone, Debug)]
pub struct Arrivals {
    interval_ns: u64,
    seed: u64,
    drawn: u64,
    due_ns: u64,
}

impl Arrivals {
    /// Arrivals `interval_us` apart on average, starting from `start_ns`.
    pub fn new(interval_us: u64, seed: u64, start_ns: u64) -> Arrivals {
        Arrivals {
            // At least 2 ns, so a gap is never 0.
            interval_ns: interval_us.saturating_mul(1000).max(2),
            seed: splitmix64(seed ^ 0x6b76),
            drawn: 0,
            due_ns: start_ns,
        }
    }

    /// The next request's due time.
    pub fn next_due(&mut self) -> u64 {
        let r = splitmix64(self.seed.wrapping_add(self.drawn));
        self.drawn += 1;
        self.due_ns += self.interval_ns / 2 + r % self.interval_ns;
        self.due_ns
    }
}

/// The table page request `index` touches.
pub fn request_page(seed: u64, index: u64, pages: u64) -> u64 {
    memory::draw(seed ^ 0x6b76_7061_6765, index, pages)
}

/// Latency histograms in the report's two layouts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Latencies {
    /// [`GuestReport::latency_hist`]'s log2 buckets.
    pub log2: [u64; LATENCY_BUCKETS],
    /// [`GuestReport::latency_fine`]'s buckets (on the heap: 30 KiB).
    pub fine: Vec<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            log2: [0; LATENCY_BUCKETS],
            fine: vec![0; LATENCY_FINE_BUCKETS],
        }
    }
}

impl Latencies {
    /// Records one latency.
    pub fn record(&mut self, ns: u64) {
        self.log2[GuestReport::latency_bucket(ns)] += 1;
        self.fine[GuestReport::latency_fine_bucket(ns)] += 1;
    }

    /// Adds another thread's histograms.
    pub fn merge(&mut self, other: &Latencies) {
        for (a, b) in self.log2.iter_mut().zip(other.log2) {
            *a += b;
        }
        for (a, b) in self.fine.iter_mut().zip(&other.fine) {
            *a += b;
        }
    }

    /// Latencies recorded.
    pub fn count(&self) -> u64 {
        self.log2.iter().sum()
    }

    /// Copies both histograms into `report`.
    pub fn fill(&self, report: &mut GuestReport) {
        report.latency_hist = self.log2;
        report.latency_fine.copy_from_slice(&self.fine);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrivals_are_seeded_and_their_gaps_bounded() {
        let mut a = Arrivals::new(100, 3, 1_000);
        let mut b = Arrivals::new(100, 3, 1_000);
        let mut c = Arrivals::new(100, 4, 1_000);
        let (mut prev, mut same_as_c) = (1_000, true);
        let mut total = 0;
        for _ in 0..1000 {
            let due = a.next_due();
            assert_eq!(due, b.next_due());
            same_as_c &= due == c.next_due();
            let gap = due - prev;
            assert!((50_000..150_000).contains(&gap), "gap {gap}");
            total += gap;
            prev = due;
        }
        assert!(!same_as_c);
        // The mean is the interval, within 5% over 1000 draws.
        assert!(
            (95_000..105_000).contains(&(total / 1000)),
            "{}",
            total / 1000
        );
    }

    #[test]
    fn requests_spread_over_the_table() {
        let pages: Vec<u64> = (0..1000).map(|i| request_page(1, i, 64)).collect();
        assert!(pages.iter().all(|&p| p < 64));
        assert_eq!(request_page(1, 17, 64), pages[17]);
        let distinct: std::collections::BTreeSet<_> = pages.iter().collect();
        assert_eq!(distinct.len(), 64);
    }

    #[test]
    fn latencies_land_in_the_reports_buckets() {
        let mut a = Latencies::default();
        a.record(0);
        a.record(1500);
        let mut b = Latencies::default();
        b.record(1024);
        a.merge(&b);
        assert_eq!(a.log2[0], 1);
        assert_eq!(a.log2[10], 2);
        assert_eq!(a.count(), 3);
        let mut report = GuestReport::new(0);
        a.fill(&mut report);
        assert_eq!(report.latency_hist, a.log2);
        assert_eq!(report.latency_fine[0], 1);
        assert_eq!(
            report.latency_fine[GuestReport::latency_fine_bucket(1024)],
            1
        );
        assert_eq!(
            report.latency_fine[GuestReport::latency_fine_bucket(1500)],
            1
        );
        assert_eq!(report.latency_fine.iter().sum::<u64>(), 3);
    }
}
