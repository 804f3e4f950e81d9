//! Event ids: UUIDv7 (RFC 9562), time-ordered and unique.
//!
//! 48 bits of Unix milliseconds, then a 12-bit counter (`rand_a`, RFC 9562 method 1) that keeps
//! ids of one process increasing within a millisecond, then 62 random bits. The random bits come
//! from a small generator (SplitMix64) seeded once per body (`IdGen::new`) from std's per-process
//! random SipHash keys mixed with the pid, the clock and a sequence number: no extra dependency,
//! no syscall per id, distinct across processes and restarts; a forked child seeds its own
//! generator for each body (with its own pid), so it does not replay its parent's sequence.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// The last id's (millisecond << 12 | counter): one atomic, so the order holds across threads.
static CLOCK: AtomicU64 = AtomicU64::new(0);
static SEQ: AtomicU64 = AtomicU64::new(0);

#[cfg(test)]
thread_local! {
    /// Test seam: when set, ids are a fixed sequence (millisecond 0x0190_0000_0000, counter and
    /// random bits from this number), so two decoders can be compared byte for byte.
    static FIXED: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Makes this thread's ids a fixed sequence starting at `start` (None: random again).
#[cfg(test)]
pub fn set_fixed(start: Option<u64>) {
    FIXED.with(|f| f.set(start));
}

/// Issues the ids of one body (one seeding, then a few arithmetic steps per id).
pub struct IdGen {
    state: u64,
}

impl IdGen {
    pub fn new() -> Self {
        static KEYS: OnceLock<RandomState> = OnceLock::new();
        let mut h = KEYS.get_or_init(RandomState::new).build_hasher();
        h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
        h.write_u32(std::process::id());
        h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        IdGen { state: h.finish() }
    }

    /// SplitMix64: a full-period sequence, each output well mixed.
    fn random64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A new UUIDv7, its millisecond the later of now and the last one issued (the counter spent
    /// within a millisecond borrows the next one), so that ids issued by this process sort in
    /// issue order. The event's own time is not used: it may be old.
    pub fn issue(&mut self) -> String {
        #[cfg(test)]
        if let Some(n) = FIXED.with(|f| f.get()) {
            FIXED.with(|f| f.set(Some(n + 1)));
            return Self::format(0x0190_0000_0000, n & 0xfff, n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        }
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let floor = now_ms << 12;
        let prev = CLOCK
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(if floor > last { floor } else { last + 1 })
            })
            .unwrap_or_else(|last| last);
        let clock = if floor > prev { floor } else { prev + 1 };
        let rand = self.random64();
        Self::format(clock >> 12, clock & 0xfff, rand)
    }

    fn format(ms: u64, counter: u64, rand: u64) -> String {
        let mut b = [0u8; 16];
        b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
        b[6] = 0x70 | ((counter >> 8) as u8 & 0x0f);
        b[7] = counter as u8;
        b[8..].copy_from_slice(&rand.to_be_bytes());
        b[8] = (b[8] & 0x3f) | 0x80;
        format_uuid(&b)
    }
}

impl Default for IdGen {
    fn default() -> Self {
        Self::new()
    }
}

/// One UUIDv7 (see `IdGen::issue`); a body's ids come from one `IdGen`.
pub fn uuid_v7(_hint_ns: u64) -> std::result::Result<String, String> {
    Ok(IdGen::new().issue())
}

/// 8-4-4-4-12 lowercase hex.
pub fn format_uuid(b: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = [0u8; 36];
    let mut j = 0;
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s[j] = b'-';
            j += 1;
        }
        s[j] = HEX[usize::from(x >> 4)];
        s[j + 1] = HEX[usize::from(x & 0x0f)];
        j += 2;
    }
    std::str::from_utf8(&s).expect("ASCII hex").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_variant_and_order() {
        let mut gen = IdGen::new();
        let ids: Vec<String> = (0..10_000)
            .map(|i| if i % 2 == 0 { gen.issue() } else { uuid_v7(0).unwrap() })
            .collect();
        for id in &ids {
            assert_eq!(id.len(), 36);
            assert_eq!(&id[14..15], "7", "{id}");
            assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        assert_eq!(format_uuid(&[0xab; 16]), "abababab-abab-abab-abab-abababababab");
    }

    #[test]
    fn increasing_across_threads() {
        let per_thread: Vec<Vec<String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    s.spawn(|| {
                        let mut gen = IdGen::new();
                        (0..5_000).map(|_| gen.issue()).collect::<Vec<_>>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<&String> = per_thread.iter().flatten().collect();
        for ids in &per_thread {
            assert!(ids.windows(2).all(|w| w[0] < w[1]), "increasing within a thread");
        }
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "unique across threads");
    }

    #[test]
    fn random_bits_differ_between_generators() {
        let (mut a, mut b) = (IdGen::new(), IdGen::new());
        assert_ne!(a.random64(), b.random64());
    }
}
