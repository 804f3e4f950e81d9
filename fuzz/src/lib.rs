//! Shared by the fuzz targets: the first bytes of an input choose a target's options, and the
//! properties are the ones `rust/fuzz_tests.rs` checks with proptest. A failed property panics,
//! which libFuzzer records as a crash.

use _core::decompress::decompress;
use _core::json_decode::json_to_protobuf;
use _core::json_encode::protobuf_to_json;
use _core::scrub::ScrubOptions;
use _core::sentry::{ItemLimits, SentryOptions};
use _core::validate::validate;
use _core::{CoreError, Result, Signal};

/// Reads option bytes off the front of an input; missing bytes read as zero.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::from(self.byte()) % items.len()]
    }

    pub fn signal(&mut self) -> Signal {
        self.pick(&Signal::ALL)
    }

    pub fn rest(self) -> &'a [u8] {
        self.data
    }
}

/// Content-Encoding values: the known ones, odd spellings and unknown ones.
pub const ENCODINGS: &[Option<&str>] = &[
    None,
    Some("identity"),
    Some("gzip"),
    Some("x-gzip"),
    Some("deflate"),
    Some("zstd"),
    Some(" GZIP "),
    Some(""),
    Some("br"),
    Some("lz4"),
    Some("gzip, zstd"),
];

/// Whether `decompress` must know the encoding: any spelling (trimmed, any ASCII case) of one it
/// supports, which it shows by decoding an empty body.
pub fn known_encoding(name: Option<&str>) -> bool {
    name.is_none_or(|n| {
        ["", "identity", "gzip", "x-gzip", "deflate", "zstd", "br"]
            .iter()
            .any(|k| n.trim().eq_ignore_ascii_case(k) && decompress(b"", Some(k), 0).is_ok())
    })
}

/// Bad data is a `Decode` error with a message, never a panic or `Usage`.
pub fn assert_decode_error<T: std::fmt::Debug>(result: &Result<T>) {
    if let Err(e) = result {
        assert!(matches!(e, CoreError::Decode(m) if !m.is_empty()), "{e:?}");
    }
}

/// `json` was written by `protobuf_to_json`: it decodes to valid protobuf that encodes to the same text.
pub fn check_encoder_output(signal: Signal, json: &[u8]) {
    assert!(std::str::from_utf8(json).is_ok(), "encoder wrote invalid UTF-8");
    let pb = json_to_protobuf(signal, json)
        .unwrap_or_else(|e| panic!("encoder output does not decode: {e}\n{}", String::from_utf8_lossy(json)));
    assert_eq!(validate(signal, &pb), Ok(()));
    let again = protobuf_to_json(signal, &pb).expect("decoded JSON encodes");
    assert_eq!(again, json, "encoding is not stable");
}

/// `pb` came from `json_to_protobuf`: valid, and protobuf → JSON → protobuf gives it back exactly.
pub fn check_decoded_json(signal: Signal, pb: &[u8]) {
    assert_eq!(validate(signal, pb), Ok(()));
    let json = protobuf_to_json(signal, pb).expect("decoded JSON encodes");
    assert_eq!(json_to_protobuf(signal, &json).as_deref(), Ok(pb), "not a fixed point");
}

/// Sentry processing options from one byte: scrubbing, conversion, sampling, tight item limits.
pub fn sentry_options(bits: u8) -> SentryOptions {
    let limits = if bits & 0x10 != 0 {
        ItemLimits {
            event: 64,
            log: 64,
            check_in: 64,
            attachment: 64,
        }
    } else {
        ItemLimits::default()
    };
    SentryOptions {
        scrub: ScrubOptions {
            enabled: bits & 1 == 0,
            extra_keys: if bits & 2 != 0 {
                vec!["user".to_owned()]
            } else {
                Vec::new()
            },
            safe_keys: if bits & 4 != 0 {
                vec!["token".to_owned()]
            } else {
                Vec::new()
            },
        },
        transaction_sample_rate: [1.0, 0.0, 0.5, f64::NAN][usize::from(bits >> 5) % 4],
        limits,
        to_otlp: bits & 8 == 0,
    }
}

/// Bad Sentry data is `Decode`, or `ItemTooLarge` / `TooLarge` for an item or event over its limit.
pub fn assert_sentry_error<T: std::fmt::Debug>(result: &Result<T>) {
    if let Err(e) = result {
        assert!(
            matches!(e, CoreError::Decode(m) if !m.is_empty())
                || matches!(e, CoreError::ItemTooLarge { size, limit, .. } if size > limit)
                || matches!(e, CoreError::LineTooLong { limit, .. } if *limit == _core::envelope::MAX_HEADER_LINE)
                || matches!(e, CoreError::TooLarge { .. }),
            "{e:?}"
        );
    }
}
