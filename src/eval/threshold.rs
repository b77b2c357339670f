//! A threshold with a stated false-alarm rate, from normal scores alone.
//!
//! Distribution-free: for `n` normal scores drawn like the station's, the k-th smallest
//! score `X(k)` leaves a false-alarm rate `1 - F(X(k))` whose law does not depend on the score
//! distribution: `F(X(k)) ~ Beta(k, n - k + 1)`, so `P(rate > r) = P(Binomial(n, 1 - r) >= k)`
//! (the k-th smallest is below the `1 - r` quantile exactly when at least k scores are). The
//! threshold for "false-alarm rate at most r with confidence c" is the smallest such k with
//! `P(Binomial(n, 1 - r) >= k) <= 1 - c` (Wilks' tolerance limit; with k = n it is the
//! well-known "59 samples for 95 % / 95 %").

/// `P(X >= k)` for `X ~ Binomial(n, p)`, summed in log space (stable for n up to millions).
pub fn binomial_upper_tail(n: usize, p: f64, k: usize) -> f64 {
    if k == 0 {
        return 1.0;
    }
    if k > n {
        return 0.0;
    }
    if p <= 0.0 {
        return 0.0;
    }
    if p >= 1.0 {
        return 1.0;
    }
    let (lp, lq) = (p.ln(), (1.0 - p).ln());
    // log C(n, k) by a sum of logs, then the pmf by its ratio recurrence.
    let mut log_c: f64 = (0..k).map(|i| ((n - i) as f64).ln() - ((i + 1) as f64).ln()).sum();
    let mut total = 0.0;
    for j in k..=n {
        total += (log_c + j as f64 * lp + (n - j) as f64 * lq).exp();
        if j < n {
            log_c += ((n - j) as f64).ln() - ((j + 1) as f64).ln();
        }
    }
    total.min(1.0)
}

/// The rank k (1-based, of the ascending scores) whose score is a threshold with a false-alarm
/// rate of at most `rate` with probability at least `confidence`; `None` when even the
/// largest of `n` scores cannot guarantee it.
pub fn rank_for_rate(n: usize, rate: f64, confidence: f64) -> Option<usize> {
    let alpha = 1.0 - confidence;
    (1..=n).find(|&k| binomial_upper_tail(n, 1.0 - rate, k) <= alpha)
}

/// The smallest false-alarm rate that the k-th smallest of `n` normal scores guarantees with
/// probability `confidence` (bisection on `rank_for_rate`'s condition).
pub fn guaranteed_rate(n: usize, k: usize, confidence: f64) -> f64 {
    let alpha = 1.0 - confidence;
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if binomial_upper_tail(n, 1.0 - mid, k) <= alpha {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// Normal images needed for the largest score to guarantee `rate` at `confidence`:
/// the smallest n with `(1 - rate)^n <= 1 - confidence`.
pub fn images_needed(rate: f64, confidence: f64) -> usize {
    ((1.0 - confidence).ln() / (1.0 - rate).ln()).ceil() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    ///' classic sample sizes for a one-sided 95 %/95 % tolerance limit: 59 scores with
    /// the largest as the limit, 93 with the second largest, 124 with the third (as tabulated
    /// in nuclear-safety practice, e.g. GRS/OECD uncertainty methods).
    #[test]
    fn wilks_sample_sizes() {
        assert_eq!(images_needed(0.05, 0.95), 59);
        assert_eq!(rank_for_rate(59, 0.05, 0.95), Some(59));
        assert_eq!(rank_for_rate(58, 0.05, 0.95), None);
        assert_eq!(rank_for_rate(93, 0.05, 0.95), Some(92));
        assert_eq!(rank_for_rate(92, 0.05, 0.95), Some(92));
        assert_eq!(rank_for_rate(124, 0.05, 0.95), Some(122));
        assert_eq!(rank_for_rate(123, 0.05, 0.95), Some(122));
    }

    /// The tail against a direct sum of the pmf with binomial coefficients as integers.
    #[test]
    fn tail_matches_an_exact_sum() {
        fn choose(n: u64, k: u64) -> f64 {
            (0..k).fold(1u128, |c, i| c * (n - i) as u128 / (i + 1) as u128) as f64
        }
        for &(n, p, k) in &[(10usize, 0.3f64, 4usize), (40, 0.95, 38), (25, 0.5, 13), (60, 0.99, 60)] {
            let exact: f64 = (k..=n).map(|j| choose(n as u64, j as u64) * p.powi(j as i32) * (1.0 - p).powi((n - j) as i32)).sum();
            let got = binomial_upper_tail(n, p, k);
            assert!((got - exact).abs() <= 1e-12 + 1e-10 * exact, "n {n} p {p} k {k}: {got} vs {exact}");
        }
    }

    #[test]
    fn guaranteed_rate_inverts_the_rank() {
        // The largest of 40 scores: 1 - 0.05^(1/40) = 0.0722.
        let r = guaranteed_rate(40, 40, 0.95);
        assert!((r - (1.0 - 0.05f64.powf(1.0 / 40.0))).abs() < 1e-9, "{r}");
        for n in [30, 100, 500] {
            for rate in [0.01, 0.05, 0.1] {
                if let Some(k) = rank_for_rate(n, rate, 0.95) {
                    assert!(guaranteed_rate(n, k, 0.95) <= rate + 1e-12);
                }
            }
        }
    }
}
