//! Consistent probability sampling, as OpenTelemetry specifies it: the rightmost 56 bits of a trace id
//! are its randomness R; a ratio becomes the rejection threshold T = round((1 - ratio) * 2^56) and a
//! trace is kept iff R >= T. Every gateway, SDK or collector using the same rule at the same ratio makes
//! the same decision for a trace, so traces are never cut in half.

/// 2^56: the number of distinct randomness values.
const MAX_THRESHOLD: u64 = 1 << 56;
const RANDOMNESS_MASK: u64 = MAX_THRESHOLD - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sampler {
    /// Keep iff randomness >= threshold; 0 keeps everything, 2^56 keeps nothing.
    threshold: u64,
}

impl Sampler {
    /// `ratio` is the fraction kept, clamped to [0, 1]. NaN keeps everything: a misconfigured gateway
    /// should not silently drop data (the control plane validates the configuration anyway).
    pub fn new(ratio: f64) -> Self {
        let ratio = if ratio.is_nan() { 1.0 } else { ratio.clamp(0.0, 1.0) };
        // 2^56 is exact in f64 and (1 - ratio) * 2^56 <= 2^56, so the cast cannot saturate.
        let threshold = ((1.0 - ratio) * MAX_THRESHOLD as f64).round() as u64;
        Sampler {
            threshold: threshold.min(MAX_THRESHOLD),
        }
    }

    /// True when every record is kept (lets callers skip reading ids).
    pub fn keeps_all(&self) -> bool {
        self.threshold == 0
    }

    /// True when no record is kept.
    pub fn keeps_none(&self) -> bool {
        self.threshold == MAX_THRESHOLD
    }

    /// Decision for a trace id. A 16-byte id uses its rightmost 56 bits; any other length (not a valid
    /// trace id, but the caller may still want a stable decision) falls back to `keep_hash`.
    pub fn keep_trace_id(&self, trace_id: &[u8]) -> bool {
        match <&[u8; 16]>::try_from(trace_id) {
            Ok(id) => self.keep_randomness(u64::from_be_bytes(last8(id)) & RANDOMNESS_MASK),
            Err(_) => self.keep_hash(trace_id),
        }
    }

    /// Decision for a record without a trace id: R is the top 56 bits of `hash64(bytes)`, so the same
    /// record bytes always get the same decision.
    pub fn keep_hash(&self, bytes: &[u8]) -> bool {
        self.keep_randomness(hash64(bytes) >> 8)
    }

    #[inline]
    fn keep_randomness(&self, randomness: u64) -> bool {
        randomness >= self.threshold
    }
}

fn last8(id: &[u8; 16]) -> [u8; 8] {
    let [_, _, _, _, _, _, _, _, tail @ ..] = *id;
    tail
}

/// FNV-1a 64 followed by the MurmurHash3 `fmix64` finalizer. FNV alone mixes the last bytes of its
/// input poorly; the finalizer spreads every input bit over the whole word. Fixed forever: changing it
/// changes which records a given ratio keeps.
pub fn hash64(bytes: &[u8]) -> u64 {
    const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = bytes
        .iter()
        .fold(FNV_OFFSET, |h, &b| (h ^ u64::from(b)).wrapping_mul(FNV_PRIME));
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic, well-spread test ids (SplitMix64), so tolerances are not flaky.
    fn ids(n: usize) -> impl Iterator<Item = [u8; 16]> {
        let mut state = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        (0..n).map(move |_| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&next().to_be_bytes());
            id[8..].copy_from_slice(&next().to_be_bytes());
            id
        })
    }

    #[test]
    fn same_trace_same_decision_across_instances() {
        let a = Sampler::new(0.3);
        let b = Sampler::new(0.3);
        for id in ids(10_000) {
            assert_eq!(a.keep_trace_id(&id), b.keep_trace_id(&id));
            assert_eq!(a.keep_hash(&id), b.keep_hash(&id));
        }
    }

    #[test]
    fn ratio_one_keeps_all_ratio_zero_keeps_none() {
        let all = Sampler::new(1.0);
        let none = Sampler::new(0.0);
        assert!(all.keeps_all() && !all.keeps_none());
        assert!(none.keeps_none() && !none.keeps_all());
        let edge = [[0u8; 16], [0xff; 16]];
        for id in ids(10_000).chain(edge) {
            assert!(all.keep_trace_id(&id));
            assert!(!none.keep_trace_id(&id));
            assert!(all.keep_hash(&id));
            assert!(!none.keep_hash(&id));
        }
    }

    #[test]
    fn out_of_range_ratios_are_clamped() {
        assert_eq!(Sampler::new(2.0), Sampler::new(1.0));
        assert_eq!(Sampler::new(-1.0), Sampler::new(0.0));
        assert_eq!(Sampler::new(f64::NAN), Sampler::new(1.0));
        assert_eq!(Sampler::new(f64::INFINITY), Sampler::new(1.0));
    }

    #[test]
    fn threshold_matches_the_spec() {
        assert_eq!(Sampler::new(0.5).threshold, 1 << 55);
        assert_eq!(Sampler::new(0.25).threshold, 3 << 54);
        // R is the rightmost 56 bits: the top byte of the second half is ignored.
        let s = Sampler::new(0.5);
        let mut id = [0u8; 16];
        id[9] = 0x80; // R = 2^55 exactly: kept (R >= T)
        assert!(s.keep_trace_id(&id));
        id[9] = 0x7f;
        id[8] = 0xff; // outside the 56 bits
        assert!(!s.keep_trace_id(&id));
    }

    #[test]
    fn keep_fraction_close_to_ratio() {
        let n = 100_000;
        for ratio in [0.01, 0.25, 0.5, 0.9] {
            let s = Sampler::new(ratio);
            let kept = ids(n).filter(|id| s.keep_trace_id(id)).count() as f64 / n as f64;
            // Binomial standard deviation at n = 100k is at most 0.0016; allow ~5 sigma.
            assert!((kept - ratio).abs() < 0.008, "ratio {ratio}: kept {kept}");
        }
    }

    #[test]
    fn hash_fraction_close_to_ratio_for_similar_inputs() {
        // Records without trace ids often differ in a byte or two; the hash must still spread them.
        let s = Sampler::new(0.25);
        let n = 100_000u32;
        let kept = (0..n)
            .filter(|i| s.keep_hash(format!("log line {i}").as_bytes()))
            .count() as f64
            / f64::from(n);
        assert!((kept - 0.25).abs() < 0.008, "kept {kept}");
    }

    #[test]
    fn higher_ratio_keeps_a_superset() {
        let low = Sampler::new(0.1);
        let high = Sampler::new(0.6);
        for id in ids(10_000) {
            if low.keep_trace_id(&id) {
                assert!(high.keep_trace_id(&id));
            }
        }
    }

    #[test]
    fn odd_lengths_do_not_panic() {
        let s = Sampler::new(0.5);
        for len in [0usize, 1, 7, 8, 15, 17, 64] {
            let id = vec![0x5a; len];
            assert_eq!(s.keep_trace_id(&id), s.keep_hash(&id));
        }
    }

    #[test]
    fn hash_is_fixed() {
        // Pinned: a change here changes which records every deployed ratio keeps.
        assert_eq!(hash64(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(hash64(b"a"), 0x82a2_a958_a9be_ce5b);
        assert_eq!(hash64(b"otlp log record"), 0x91fe_3539_65df_9423);
    }
}
