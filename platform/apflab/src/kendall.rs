//! Kendall's rank correlation: how far two rankings of the same items
//! agree, from +1 (the same order) through 0 to −1 (reversed).
//!
//! Used to say whether two backends rank the same configs alike (the paper's
//! `{{kendall ...}}`). Ties are part of the answer: two configs whose runs
//! show no difference on a backend are tied there, not ordered by the noise
//! of their means, so the statistic is Kendall's τ_b, which corrects for
//! ties in either ranking:
//!
//! τ_b = (concordant − discordant) / √((pairs − tied in A) · (pairs − tied in B))
//!
//! It is computed from each pair's order on both sides
//! ([`Agreement::of_orders`]), so a caller decides what counts as a tie;
//! [`Agreement::of_values`] orders by value with exact ties, as the textbook
//! (and SciPy's `kendalltau`) does.

use std::cmp::Ordering;

/// How two rankings of the same items agree, pair by pair.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Agreement {
    /// Pairs of items compared.
    pub pairs: usize,
    /// Pairs both rankings order the same way.
    pub concordant: usize,
    /// Pairs the rankings order the opposite way.
    pub discordant: usize,
    /// Pairs tied in the first ranking (whatever the second says).
    pub tied_a: usize,
    /// Pairs tied in the second ranking (whatever the first says).
    pub tied_b: usize,
}

impl Agreement {
    /// The agreement of the pairs' orders: for each pair of items (i, j),
    /// how the first ranking orders i against j, and how the second does.
    pub fn of_orders(orders: impl IntoIterator<Item = (Ordering, Ordering)>) -> Self {
        let mut a = Agreement::default();
        for (x, y) in orders {
            a.pairs += 1;
            match (x, y) {
                (Ordering::Equal, Ordering::Equal) => {
                    a.tied_a += 1;
                    a.tied_b += 1;
                }
                (Ordering::Equal, _) => a.tied_a += 1,
                (_, Ordering::Equal) => a.tied_b += 1,
                (x, y) if x == y => a.concordant += 1,
                _ => a.discordant += 1,
            }
        }
        a
    }

    /// The agreement of two lists of values of the same items (`xs[i]` and
    /// `ys[i]` are item i's), equal values tied; `None` if the lists differ
    /// in length or hold a NaN.
    pub fn of_values(xs: &[f64], ys: &[f64]) -> Option<Self> {
        if xs.len() != ys.len() {
            return None;
        }
        let mut orders = Vec::new();
        for i in 0..xs.len() {
            for j in i + 1..xs.len() {
                orders.push((xs[i].partial_cmp(&xs[j])?, ys[i].partial_cmp(&ys[j])?));
            }
        }
        Some(Self::of_orders(orders))
    }

    /// Kendall's τ_b; `None` where it is undefined: no pair, or every pair
    /// tied in one of the rankings (a ranking that orders nothing cannot
    /// agree or disagree).
    pub fn tau_b(&self) -> Option<f64> {
        let untied_a = (self.pairs - self.tied_a) as f64;
        let untied_b = (self.pairs - self.tied_b) as f64;
        if untied_a == 0.0 || untied_b == 0.0 {
            return None;
        }
        Some((self.concordant as f64 - self.discordant as f64) / (untied_a * untied_b).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tau(xs: &[f64], ys: &[f64]) -> Option<f64> {
        Agreement::of_values(xs, ys).unwrap().tau_b()
    }

    #[test]
    fn the_same_order_is_1_and_the_reversed_order_is_minus_1() {
        let xs = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(tau(&xs, &[10.0, 20.0, 30.0, 40.0]), Some(1.0));
        assert_eq!(tau(&xs, &[4.0, 3.0, 2.0, 1.0]), Some(-1.0));
        let a = Agreement::of_values(&xs, &[4.0, 3.0, 2.0, 1.0]).unwrap();
        assert_eq!((a.pairs, a.concordant, a.discordant), (6, 0, 6));
    }

    #[test]
    fn one_swapped_neighbour_of_four_is_two_thirds() {
        // 6 pairs, the swapped one discordant: (5 - 1) / 6.
        let a = Agreement::of_values(&[1.0, 2.0, 3.0, 4.0], &[1.0, 2.0, 4.0, 3.0]).unwrap();
        assert_eq!(
            (a.concordant, a.discordant, a.tied_a, a.tied_b),
            (5, 1, 0, 0)
        );
        assert!((a.tau_b().unwrap() - 4.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn ties_in_either_ranking_shrink_the_denominator_as_tau_b_does() {
        // SciPy's documented example of `kendalltau` (ties on both sides):
        // τ_b = -0.47140452079103173.
        let a =
            Agreement::of_values(&[12.0, 2.0, 1.0, 12.0, 2.0], &[1.0, 4.0, 7.0, 1.0, 0.0]).unwrap();
        assert_eq!(a.pairs, 10);
        assert_eq!((a.tied_a, a.tied_b), (2, 1));
        assert!(
            (a.tau_b().unwrap() - -0.471_404_520_791_031_73).abs() < 1e-12,
            "{a:?}"
        );
        // A tie on one side only, worked by hand: xs = [1, 1, 2], ys = [1,
        // 2, 3]: (0,1) tied in A, (0,2) and (1,2) concordant, so
        // (2 - 0) / √((3 - 1) · 3) = 2 / √6.
        let a = Agreement::of_values(&[1.0, 1.0, 2.0], &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(
            (a.concordant, a.discordant, a.tied_a, a.tied_b),
            (2, 0, 1, 0)
        );
        assert!((a.tau_b().unwrap() - 2.0 / 6f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn a_ranking_that_orders_nothing_has_no_tau() {
        assert_eq!(tau(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), None);
        assert_eq!(tau(&[1.0], &[2.0]), None);
        assert_eq!(tau(&[], &[]), None);
        assert!(Agreement::of_values(&[1.0, 2.0], &[1.0]).is_none());
        assert!(Agreement::of_values(&[1.0, f64::NAN], &[1.0, 2.0]).is_none());
    }

    #[test]
    fn orders_are_counted_as_given() {
        use Ordering::{Equal, Greater, Less};
        let a = Agreement::of_orders([
            (Less, Less),
            (Greater, Greater),
            (Less, Greater),
            (Equal, Less),
            (Less, Equal),
            (Equal, Equal),
        ]);
        assert_eq!(
            a,
            Agreement {
                pairs: 6,
                concordant: 2,
                discordant: 1,
                tied_a: 2,
                tied_b: 2,
            }
        );
        // (2 - 1) / √(4 · 4).
        assert_eq!(a.tau_b(), Some(0.25));
    }
}
