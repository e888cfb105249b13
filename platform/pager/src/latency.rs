//! Fetch latency: the per-fetch latency distributions, and the timeline
//! that adds queueing (a fixed number of fetch slots) and bandwidth (page
//! transfers serialise on one link).
//!
//! Everything is in nanoseconds on a clock the caller chooses: virtual time
//! on emu, monotonic time since the pager started on kvm. Sampling uses a
//! seeded ChaCha RNG, so the same seed gives the same latencies.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;

use apflab_abi::memory_map::PAGE_SIZE;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal, Uniform};

use crate::config::{ConfigError, LatencyConfig, MAX_LATENCY_US, MAX_SAMPLES_BYTES, latency_range};

/// A latency distribution ready to sample.
#[derive(Clone, Debug)]
pub enum LatencyModel {
    /// Always this many ns.
    Constant(u64),
    /// Uniform over ns.
    Uniform(Uniform<f64>),
    /// Log-normal over ns.
    LogNormal(LogNormal<f64>),
    /// Bootstrap from samples in ns (never empty).
    Empirical(Vec<u64>),
}

impl LatencyModel {
    /// Builds the model for a validated config; an empirical samples path
    /// is resolved against `base_dir`.
    pub fn from_config(config: &LatencyConfig, base_dir: &Path) -> Result<Self, ConfigError> {
        Ok(match *config {
            LatencyConfig::Constant { us } => LatencyModel::Constant(us_to_ns(us)),
            LatencyConfig::Uniform { min_us, max_us } => {
                LatencyModel::Uniform(Uniform::new_inclusive(min_us * 1e3, max_us * 1e3).map_err(
                    |e| ConfigError::Invalid {
                        key: "latency.min_us",
                        value: min_us.to_string(),
                        reason: e.to_string(),
                    },
                )?)
            }
            LatencyConfig::Lognormal { median_us, sigma } => LatencyModel::LogNormal(
                // The median of a log-normal is exp(mu).
                LogNormal::new((median_us * 1e3).ln(), sigma).map_err(|e| {
                    ConfigError::Invalid {
                        key: "latency.sigma",
                        value: sigma.to_string(),
                        reason: e.to_string(),
                    }
                })?,
            ),
            LatencyConfig::Empirical { ref samples } => {
                LatencyModel::Empirical(load_samples(&base_dir.join(samples))?)
            }
        })
    }

    /// One latency in ns.
    #[inline]
    pub fn sample(&self, rng: &mut ChaCha8Rng) -> u64 {
        match self {
            LatencyModel::Constant(ns) => *ns,
            LatencyModel::Uniform(d) => d.sample(rng).round() as u64,
            LatencyModel::LogNormal(d) => d.sample(rng).round().min(u64::MAX as f64) as u64,
            LatencyModel::Empirical(s) => s[rng.random_range(0..s.len())],
        }
    }
}

/// µs to ns; saturates (a float-to-integer cast does) rather than wraps.
fn us_to_ns(us: f64) -> u64 {
    (us * 1e3).round() as u64
}

/// Reads a samples file: one latency in µs per line, blank lines and
/// `#` comments ignored; errors name the file and line.
pub fn load_samples(path: &Path) -> Result<Vec<u64>, ConfigError> {
    const KEY: &str = "latency.samples";
    let text = apflab_files::read_regular_to_string(path, MAX_SAMPLES_BYTES, "a samples file")
        .map_err(|source| ConfigError::File {
            key: KEY,
            path: path.to_owned(),
            source,
        })?;
    let mut samples = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let bad = |reason: String| ConfigError::FileLine {
            key: KEY,
            path: path.to_owned(),
            line: i + 1,
            reason,
        };
        let us: f64 = line.parse().map_err(|_| {
            bad(format!(
                "expected a latency in microseconds, found {line:?}"
            ))
        })?;
        if !(us.is_finite() && (0.0..=MAX_LATENCY_US).contains(&us)) {
            return Err(bad(format!("{}, found {line:?}", latency_range())));
        }
        samples.push(us_to_ns(us));
    }
    if samples.is_empty() {
        return Err(ConfigError::FileLine {
            key: KEY,
            path: path.to_owned(),
            line: text.lines().count(),
            reason: "the file holds no samples".into(),
        });
    }
    Ok(samples)
}

/// When one fetch starts waiting, starts being served and is ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchTimes {
    /// When a fetch slot became free for it (≥ the request time).
    pub start_ns: u64,
    /// When the page is in host memory.
    pub ready_ns: u64,
}

/// Fetch slots and the link, in time order.
///
/// A fetch requested at `now` takes the earliest free slot
/// (`start = max(now, slot free)`), spends its sampled latency, then
/// transfers the page once the link is free (`PAGE_SIZE / bandwidth`); the
/// slot is busy until the page is in. Write-backs occupy the link too.
#[derive(Clone, Debug)]
pub struct FetchTimeline {
    slots: BinaryHeap<Reverse<u64>>,
    link_free_ns: u64,
    transfer_ns: u64,
}

impl FetchTimeline {
    /// `queue_depth` slots (≥ 1); `bandwidth` in bytes/s, `None` unlimited.
    pub fn new(queue_depth: u32, bandwidth: Option<u64>) -> Self {
        let transfer_ns = bandwidth.map_or(0, |bw| {
            // ceil(PAGE_SIZE * 1e9 / bw) without overflow for any bw ≥ 1.
            (PAGE_SIZE as u128 * 1_000_000_000).div_ceil(bw as u128) as u64
        });
        FetchTimeline {
            slots: (0..queue_depth.max(1)).map(|_| Reverse(0)).collect(),
            link_free_ns: 0,
            transfer_ns,
        }
    }

    /// Time one page occupies the link.
    pub fn transfer_ns(&self) -> u64 {
        self.transfer_ns
    }

    /// Schedules a fetch requested at `now_ns` whose latency (all attempts)
    /// is `latency_ns`.
    pub fn schedule(&mut self, now_ns: u64, latency_ns: u64) -> FetchTimes {
        let Reverse(slot_free) = self.slots.pop().unwrap_or(Reverse(0));
        let start_ns = now_ns.max(slot_free);
        // Saturating: a clock at u64::MAX means "never" (the run's time
        // limit stops it), never a wrapped, early time.
        let mut ready_ns = start_ns.saturating_add(latency_ns);
        if self.transfer_ns > 0 {
            ready_ns = ready_ns
                .max(self.link_free_ns)
                .saturating_add(self.transfer_ns);
            self.link_free_ns = ready_ns;
        }
        self.slots.push(Reverse(ready_ns));
        FetchTimes { start_ns, ready_ns }
    }

    /// Accounts a page written back at `now_ns` (it uses the link).
    pub fn write_back(&mut self, now_ns: u64) {
        if self.transfer_ns > 0 {
            self.link_free_ns = self
                .link_free_ns
                .max(now_ns)
                .saturating_add(self.transfer_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::io::Write;

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    fn model(c: LatencyConfig) -> LatencyModel {
        LatencyModel::from_config(&c, Path::new(".")).unwrap()
    }

    #[test]
    fn lognormal_median_matches_config() {
        let m = model(LatencyConfig::Lognormal {
            median_us: 50.0,
            sigma: 0.8,
        });
        let mut r = rng(7);
        let mut v: Vec<u64> = (0..20_001).map(|_| m.sample(&mut r)).collect();
        v.sort_unstable();
        let median = v[v.len() / 2] as f64;
        assert!(
            (median - 50_000.0).abs() < 0.03 * 50_000.0,
            "median {median}"
        );
        // A heavy right tail: p99 ≈ median·e^(2.326σ) ≈ 6.4x the median.
        let p99 = v[v.len() * 99 / 100] as f64;
        assert!(p99 > 5.0 * median && p99 < 8.0 * median, "p99 {p99}");
    }

    #[test]
    fn uniform_stays_in_bounds_and_covers_them() {
        let m = model(LatencyConfig::Uniform {
            min_us: 10.0,
            max_us: 20.0,
        });
        let mut r = rng(1);
        let v: Vec<u64> = (0..10_000).map(|_| m.sample(&mut r)).collect();
        assert!(v.iter().all(|&x| (10_000..=20_000).contains(&x)));
        let mean = v.iter().sum::<u64>() as f64 / v.len() as f64;
        assert!((mean - 15_000.0).abs() < 200.0, "mean {mean}");
    }

    #[test]
    fn same_seed_same_sequence() {
        let m = model(LatencyConfig::Lognormal {
            median_us: 5.0,
            sigma: 1.0,
        });
        let a: Vec<u64> = {
            let mut r = rng(3);
            (0..100).map(|_| m.sample(&mut r)).collect()
        };
        let b: Vec<u64> = {
            let mut r = rng(3);
            (0..100).map(|_| m.sample(&mut r)).collect()
        };
        let c: Vec<u64> = {
            let mut r = rng(4);
            (0..100).map(|_| m.sample(&mut r)).collect()
        };
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn empirical_draws_only_its_samples() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "# measured on rack 3\n12.5\n\n40 # slow one\n7").unwrap();
        let m = LatencyModel::from_config(
            &LatencyConfig::Empirical {
                samples: f.path().to_owned(),
            },
            Path::new("/nonexistent"),
        )
        .unwrap();
        let mut r = rng(0);
        let seen: std::collections::BTreeSet<u64> = (0..1000).map(|_| m.sample(&mut r)).collect();
        assert_eq!(seen, [7_000, 12_500, 40_000].into_iter().collect());
    }

    #[test]
    fn bad_samples_name_file_and_line() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "12\n13\nfast\n").unwrap();
        let e = load_samples(f.path()).unwrap_err().to_string();
        let expected = format!(
            "{}:3: expected a latency in microseconds",
            f.path().display()
        );
        assert!(e.contains(&expected), "{e}");
        assert!(e.starts_with("pager.latency.samples"), "{e}");
        let mut g = tempfile::NamedTempFile::new().unwrap();
        writeln!(g, "-4").unwrap();
        let e = load_samples(g.path()).unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("non-negative"), "{e}");
        let empty = tempfile::NamedTempFile::new().unwrap();
        let e = load_samples(empty.path()).unwrap_err().to_string();
        assert!(e.contains("no samples"), "{e}");
        let e = load_samples(Path::new("/no/such/file"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/no/such/file") && e.contains("cannot read"),
            "{e}"
        );
    }

    #[test]
    fn bandwidth_adds_page_over_bandwidth() {
        // 4096 bytes at 409.6 MB/s = 10 µs on the link.
        let mut t = FetchTimeline::new(4, Some(409_600_000));
        assert_eq!(t.transfer_ns(), 10_000);
        let f = t.schedule(1_000, 5_000);
        assert_eq!(f.ready_ns, 1_000 + 5_000 + 10_000);
        // A second fetch at the same time overlaps its latency but must
        // wait for the link.
        let g = t.schedule(1_000, 5_000);
        assert_eq!(g.ready_ns, f.ready_ns + 10_000);
        // Write-backs occupy the link as well.
        t.write_back(0);
        let h = t.schedule(1_000, 5_000);
        assert_eq!(h.ready_ns, g.ready_ns + 20_000);
    }

    #[test]
    fn huge_latencies_saturate_the_timeline_instead_of_wrapping_it() {
        // 1e300 µs with a bandwidth used to wrap to a fetch ready at once.
        let m = model(LatencyConfig::Constant { us: 1e300 });
        assert_eq!(m.sample(&mut rng(0)), u64::MAX);
        let mut t = FetchTimeline::new(2, Some(1_000_000_000));
        let f = t.schedule(1_000, u64::MAX);
        assert_eq!(f.ready_ns, u64::MAX);
        // The link stays busy "forever": the next fetch is never early.
        assert_eq!(t.schedule(2_000, 0).ready_ns, u64::MAX);
        t.write_back(u64::MAX);
        assert_eq!(t.schedule(3_000, 0).ready_ns, u64::MAX);
    }

    #[test]
    fn queueing_shows_when_depth_is_exceeded() {
        let mut t = FetchTimeline::new(2, None);
        let lat: Vec<u64> = (0..6)
            .map(|_| {
                let f = t.schedule(0, 100);
                f.ready_ns
            })
            .collect();
        // Two at a time: the third and fourth wait for the first two.
        assert_eq!(lat, [100, 100, 200, 200, 300, 300]);
        let mut deep = FetchTimeline::new(8, None);
        assert!((0..6).all(|_| deep.schedule(0, 100).ready_ns == 100));
        // A request after the queue drained starts at once.
        let f = t.schedule(1_000, 100);
        assert_eq!(
            f,
            FetchTimes {
                start_ns: 1_000,
                ready_ns: 1_100
            }
        );
    }
}
