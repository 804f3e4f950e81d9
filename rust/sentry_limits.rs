//! Sentry rate limits: which data categories the upstream Sentry has asked us to hold back, and
//! until when. Both sides read one instance per worker: the Sentry exporter stops sending limited
//! categories until the limit expires, and the Sentry receiver (the front's route, or the app's)
//! answers clients that send them 429 with the same limits, so the SDKs back off instead of the
//! gateway queuing without bound.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::sentry::parse_rate_limits;

/// The category an empty category list in `X-Sentry-Rate-Limits` stands for: all of them.
pub const ALL: &str = "*";
/// What sentry-sdk assumes for a 429 without limits or Retry-After.
pub const DEFAULT_RETRY_AFTER_S: f64 = 60.0;
/// Longest limit kept (a year): a larger or infinite one is held this long.
const MAX_LIMIT_S: f64 = 365.0 * 24.0 * 3600.0;

#[derive(Debug, Default)]
pub struct RateLimits {
    /// (category, limited until); a handful of entries at most.
    until: Mutex<Vec<(String, Instant)>>,
}

impl RateLimits {
    /// Records the limits of one upstream answer (a 429, or a 200 carrying limits).
    pub fn update(&self, header: Option<&str>, retry_after: Option<f64>, status: u16) {
        let now = Instant::now();
        let mut limits: Vec<(f64, Vec<String>)> = header
            .map(parse_rate_limits)
            .unwrap_or_default()
            .into_iter()
            .map(|l| (l.retry_after as f64, l.categories))
            .collect();
        if limits.is_empty() && status == 429 {
            limits.push((retry_after.unwrap_or(DEFAULT_RETRY_AFTER_S), Vec::new()));
        }
        let mut until = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        until.retain(|(_, end)| *end > now);
        for (seconds, categories) in limits {
            // A negative or NaN wait limits nothing (`min` would turn NaN into the maximum).
            if seconds.is_nan() {
                continue;
            }
            let Ok(wait) = Duration::try_from_secs_f64(seconds.min(MAX_LIMIT_S)) else {
                continue;
            };
            let end = now + wait;
            let all = [ALL.to_owned()];
            let categories = if categories.is_empty() {
                &all[..]
            } else {
                &categories[..]
            };
            for category in categories {
                match until.iter_mut().find(|(c, _)| c == category) {
                    Some(entry) => entry.1 = entry.1.max(end),
                    None => until.push((category.clone(), end)),
                }
            }
        }
    }

    /// The categories among `categories` still limited, with the seconds left, in their order.
    pub fn limited<S: AsRef<str>>(&self, categories: &[S]) -> Vec<(String, f64)> {
        let until = self.until.lock().unwrap_or_else(PoisonError::into_inner);
        if until.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        let left = |category: &str| {
            until
                .iter()
                .find(|(c, _)| c == category)
                .map_or(0.0, |(_, end)| end.saturating_duration_since(now).as_secs_f64())
        };
        let every = left(ALL);
        categories
            .iter()
            .filter_map(|category| {
                let category = category.as_ref();
                let seconds = left(category).max(every);
                (seconds > 0.0).then(|| (category.to_owned(), seconds))
            })
            .collect()
    }
}

/// (`X-Sentry-Rate-Limits`, `Retry-After`) values telling a client about `limited`: each
/// category's seconds rounded up, by category name.
pub fn client_headers(limited: &[(String, f64)]) -> (String, String) {
    let mut sorted: Vec<&(String, f64)> = limited.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let parts: Vec<String> = sorted
        .iter()
        .map(|(category, seconds)| format!("{}:{category}:key", (*seconds as u64).saturating_add(1)))
        .collect();
    let longest = limited.iter().map(|(_, s)| *s).fold(0.0, f64::max);
    (parts.join(", "), (longest as u64).saturating_add(1).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_limits_its_categories_and_all_limits_every_one() {
        let limits = RateLimits::default();
        assert!(limits.limited(&["error"]).is_empty());
        limits.update(Some("60:error;transaction:key, 5::organization"), None, 200);
        let got = limits.limited(&["transaction", "error", "session"]);
        let names: Vec<&str> = got.iter().map(|(c, _)| c.as_str()).collect();
        assert_eq!(
            names,
            ["transaction", "error", "session"],
            "all (5 s) covers session too"
        );
        assert!(got[0].1 > 55.0 && got[0].1 <= 60.0, "{got:?}");
        assert!(got[2].1 > 0.0 && got[2].1 <= 5.0, "{got:?}");
        // A later, shorter limit does not cut a longer one short.
        limits.update(Some("1:error"), None, 429);
        assert!(limits.limited(&["error"])[0].1 > 55.0);
    }

    #[test]
    fn a_bare_429_limits_everything_for_its_retry_after_or_a_minute() {
        let limits = RateLimits::default();
        limits.update(None, Some(30.0), 429);
        let got = limits.limited(&["error"]);
        assert!(got[0].1 > 25.0 && got[0].1 <= 30.0, "{got:?}");
        let limits = RateLimits::default();
        limits.update(Some("garbage"), None, 429);
        assert!(limits.limited(&["span"])[0].1 > 55.0);
        // A 200 without limits, or a negative wait, limits nothing.
        let limits = RateLimits::default();
        limits.update(None, None, 200);
        limits.update(None, Some(-5.0), 429);
        limits.update(None, Some(f64::NAN), 429);
        assert!(limits.limited(&["error"]).is_empty());
        limits.update(None, Some(f64::INFINITY), 429);
        assert!(limits.limited(&["error"])[0].1 > 1e6, "held, for a year at most");
    }

    #[test]
    fn client_headers_round_up_and_sort() {
        let limited = vec![("transaction".to_owned(), 9.2), ("error".to_owned(), 59.9)];
        assert_eq!(
            client_headers(&limited),
            ("60:error:key, 10:transaction:key".to_owned(), "60".to_owned())
        );
        // Whatever a caller passes (Python can): no overflow.
        let (limits, retry_after) = client_headers(&[("x".to_owned(), f64::INFINITY)]);
        assert_eq!(limits, format!("{}:x:key", u64::MAX));
        assert_eq!(retry_after, u64::MAX.to_string());
    }
}
