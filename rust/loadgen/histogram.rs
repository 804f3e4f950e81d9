//! Latency histogram in the HDR style: exact below 128 µs, then 64 buckets per power of two
//! (values within 1.6 % of the truth), in a fixed array so recording never allocates.

/// Buckets per power of two above the exact range (6 bits of precision).
const SUB: u64 = 64;
const EXACT: u64 = 2 * SUB;
/// 128 exact buckets plus 64 per octave for shifts 1..=57 (values up to 2^64 µs).
const BUCKETS: usize = (EXACT + 57 * SUB) as usize;

#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            total: 0,
            max: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let bits = 64 - u64::from(v.leading_zeros());
    let shift = bits - 7; // v >> shift lies in [64, 128)
    (EXACT + (shift - 1) * SUB + ((v >> shift) - SUB)) as usize
}

/// The highest value bucket `i` holds.
fn highest(i: usize) -> u64 {
    let i = i as u64;
    if i < EXACT {
        return i;
    }
    let shift = (i - EXACT) / SUB + 1;
    let top = (i - EXACT) % SUB + SUB;
    // The last bucket's bound is 2^64 - 1: the shift wraps to 0 and the subtraction back.
    ((top + 1) << shift).wrapping_sub(1)
}

impl Histogram {
    pub fn record(&mut self, micros: u64) {
        self.counts[index(micros)] += 1;
        self.total += 1;
        self.max = self.max.max(micros);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at percentile `p` (0–100): the smallest bucket bound with at least p % of the
    /// samples at or below it, never above the largest sample.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p / 100.0 * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return highest(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_values_in_order() {
        let mut last = 0;
        for v in (0..100_000u64).chain([u64::MAX / 3, u64::MAX]) {
            let i = index(v);
            assert!(i >= last && i < BUCKETS, "{v} -> {i}");
            assert!(highest(i) >= v, "{v} above its bucket's bound {}", highest(i));
            if i > 0 {
                assert!(highest(i - 1) < v);
            }
            last = i;
        }
    }

    #[test]
    fn percentiles_within_precision() {
        let mut h = Histogram::default();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        assert_eq!(h.count(), 10_000);
        assert_eq!(h.max(), 10_000);
        for (p, want) in [(50.0, 5_000.0), (90.0, 9_000.0), (99.0, 9_900.0)] {
            let got = h.percentile(p) as f64;
            assert!((got - want).abs() / want < 0.02, "p{p}: {got} vs {want}");
        }
        assert_eq!(h.percentile(100.0), 10_000);
        assert_eq!(h.percentile(0.0), 1);
    }

    #[test]
    fn merge_adds_counts() {
        let (mut a, mut b) = (Histogram::default(), Histogram::default());
        a.record(5);
        b.record(500);
        b.record(50_000);
        a.merge(&b);
        assert_eq!(a.count(), 3);
        assert_eq!(a.max(), 50_000);
        assert_eq!(a.percentile(50.0), highest(index(500))); // 503: the bucket's bound
        assert_eq!(Histogram::default().percentile(99.0), 0);
    }
}
