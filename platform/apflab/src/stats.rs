//! Repetitions as estimates: the mean of a figure over runs that differ
//! only by their seeds, with its 95 % confidence interval, and how a
//! difference is printed when that interval holds 0.
//!
//! The emu backend is deterministic for one seed, but a figure that moves
//! with the seed (fetch latencies drawn, page order, the pages resident at
//! boot) is a sample, not a constant: a difference between two designs is
//! one only when its interval excludes 0. Every table and every sentence of
//! the paper that compares runs goes through [`Estimate`].

/// Two-sided 95 % quantiles of Student's t for 1..=30 degrees of freedom;
/// beyond, the normal 1.96.
const T95: [f64; 30] = [
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
    2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
    2.052, 2.048, 2.045, 2.042,
];

/// Mean and half-width of the 95 % confidence interval of `xs` (Student's
/// t); the half-width is 0 for fewer than two values.
pub fn mean_ci95(xs: &[f64]) -> (f64, f64) {
    let n = xs.len();
    if n == 0 {
        return (0.0, 0.0);
    }
    let mean = xs.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    let t = T95.get(n - 2).copied().unwrap_or(1.96);
    (mean, t * (var / n as f64).sqrt())
}

/// The mean of a figure over `n` runs and the half-width of its 95 %
/// confidence interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// The mean.
    pub mean: f64,
    /// Half-width of the 95 % interval (0 for one run).
    pub half_width: f64,
    /// Runs it is the mean of.
    pub n: usize,
}

impl Estimate {
    /// The estimate of `xs` (no values: a mean of 0 over 0 runs).
    pub fn of(xs: &[f64]) -> Self {
        let (mean, mut half_width) = mean_ci95(xs);
        // Runs that all gave the same figure have no interval; what is left
        // of one is the rounding of the mean.
        if xs.iter().all(|&x| x == xs[0]) {
            half_width = 0.0;
        }
        Estimate {
            mean,
            half_width,
            n: xs.len(),
        }
    }

    /// Whether the interval holds 0, so the runs show no difference: always
    /// for fewer than two runs, which have no interval to exclude it with.
    pub fn holds_zero(&self) -> bool {
        self.n < 2 || (self.mean - self.half_width <= 0.0 && self.mean + self.half_width >= 0.0)
    }

    /// A value with its interval, `12.345 ± 0.067` (`decimals` digits), or
    /// the value alone for one run or runs that all gave it.
    /// (Up to three more digits where the half-width would read 0.)
    pub fn value(&self, decimals: usize) -> String {
        if self.n < 2 || self.half_width == 0.0 {
            return format!("{:.*}", decimals, self.mean);
        }
        let mut d = decimals;
        while d < decimals + 3 && self.half_width < 0.5 * 10f64.powi(-(d as i32)) {
            d += 1;
        }
        format!("{:.*} ± {:.*}", d, self.mean, d, self.half_width)
    }

    /// A difference in percent: `−3.6 ± 0.4 %` where the interval excludes
    /// 0, `no difference (+0.1 ± 0.3 %)` where it holds it, and, for one run
    /// (no interval), `+2.0 % (1 run)`.
    pub fn difference(&self) -> String {
        // One decimal, or as many (up to three) as the half-width needs to
        // show a digit that is not 0.
        let decimals = match self.half_width {
            h if h == 0.0 || h >= 0.05 => 1,
            h if h >= 0.005 => 2,
            _ => 3,
        };
        let signed = |v: f64| format!("{v:+.decimals$}").replace('-', "−");
        let half = format!("{:.decimals$}", self.half_width);
        if self.n < 2 {
            format!("{} % (1 run)", signed(self.mean))
        } else if self.half_width == 0.0 && self.mean != 0.0 {
            format!("{} % (the same in all {} runs)", signed(self.mean), self.n)
        } else if self.holds_zero() {
            format!("no difference ({} ± {half} %)", signed(self.mean))
        } else {
            format!("{} ± {half} %", signed(self.mean))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_of_known_samples_uses_students_t() {
        // Mean 2, sample sd 1, n 3: t(2) = 4.303, half-width 4.303 / sqrt 3.
        let (m, h) = mean_ci95(&[1.0, 2.0, 3.0]);
        assert_eq!(m, 2.0);
        assert!((h - 4.303 / 3f64.sqrt()).abs() < 1e-9, "{h}");
        assert_eq!(mean_ci95(&[5.0]), (5.0, 0.0));
        assert_eq!(mean_ci95(&[]), (0.0, 0.0));
    }

    #[test]
    fn an_interval_that_holds_zero_is_printed_as_no_difference() {
        let e = Estimate::of(&[-1.0, 0.5, 1.0, -0.2]);
        assert!(e.holds_zero());
        assert!(
            e.difference().starts_with("no difference ("),
            "{}",
            e.difference()
        );
        let e = Estimate::of(&[-3.0, -3.5, -4.0, -3.2]);
        assert!(!e.holds_zero());
        assert!(e.difference().starts_with("−3.4 ± "), "{}", e.difference());
        assert_eq!(Estimate::of(&[2.0]).difference(), "+2.0 % (1 run)");
        // A narrow interval keeps a digit that is not 0.
        assert_eq!(
            Estimate::of(&[0.10, 0.11, 0.12]).difference(),
            "+0.11 ± 0.02 %"
        );
        assert_eq!(
            Estimate::of(&[0.0, 0.0]).difference(),
            "no difference (+0.0 ± 0.0 %)"
        );
        assert_eq!(Estimate::of(&[1.0, 3.0]).value(1), "2.0 ± 12.7");
        assert_eq!(Estimate::of(&[0.33, 0.33]).value(2), "0.33");
        assert_eq!(Estimate::of(&[2.10, 2.11, 2.12]).value(1), "2.11 ± 0.02");
        assert_eq!(
            Estimate::of(&[3.856, 3.856, 3.856]).difference(),
            "+3.9 % (the same in all 3 runs)"
        );
    }
}
