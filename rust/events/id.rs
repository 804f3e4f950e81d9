//! Event ids: UUIDv7 (RFC 9562), time-ordered and unique.
//!
//! 48 bits of Unix milliseconds, then a 12-bit counter (`rand_a`, RFC 9562 method 1) that keeps
//! ids of one process increasing within a millisecond, then 62 random bits. The random bits come
//! from std's per-process random SipHash keys mixed with the pid, the clock and a sequence number:
//! no extra dependency, distinct across processes and restarts.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// (last millisecond used, counter within it).
static CLOCK: Mutex<(u64, u64)> = Mutex::new((0, 0));
static SEQ: AtomicU64 = AtomicU64::new(0);

fn random64() -> u64 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    let mut h = KEYS.get_or_init(RandomState::new).build_hasher();
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// A new UUIDv7, its millisecond the later of `hint_ns` (the event's time, when it is not in the
/// future) and the last one issued, so that ids issued by this process sort in issue order.
/// `hint_ns` is ignored: ids follow the receive clock (an event's own time may be old).
pub fn uuid_v7(_hint_ns: u64) -> std::result::Result<String, String> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (ms, counter) = {
        let mut clock = CLOCK.lock().unwrap_or_else(|p| p.into_inner());
        if now_ms > clock.0 {
            *clock = (now_ms, 0);
        } else if clock.1 >= 0xfff {
            // Counter spent within this millisecond: borrow the next one.
            *clock = (clock.0 + 1, 0);
        } else {
            clock.1 += 1;
        }
        *clock
    };
    let rand = random64();
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    b[6] = 0x70 | ((counter >> 8) as u8 & 0x0f);
    b[7] = counter as u8;
    b[8..].copy_from_slice(&rand.to_be_bytes());
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(format_uuid(&b))
}

/// 8-4-4-4-12 lowercase hex.
pub fn format_uuid(b: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[usize::from(x >> 4)] as char);
        s.push(HEX[usize::from(x & 0x0f)] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_variant_and_order() {
        let ids: Vec<String> = (0..10_000).map(|_| uuid_v7(0).unwrap()).collect();
        for id in &ids {
            assert_eq!(id.len(), 36);
            assert_eq!(&id[14..15], "7", "{id}");
            assert!(matches!(&id[19..20], "8" | "9" | "a" | "b"), "{id}");
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        assert_eq!(format_uuid(&[0xab; 16]), "abababab-abab-abab-abab-abababababab");
    }
}
