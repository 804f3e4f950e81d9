//! Property-based fuzzing of the msgpack reader, the Fluent body framings and the forward
//! framing (beside `crate::fuzz_tests`, same conventions: a fixed seed in `cargo test`,
//! `PROPTEST_CASES=N` for longer runs). Whatever the bytes: nothing panics, errors are `Decode`
//! (or `TooLarge`/`Unsupported`), what converts is a valid OTLP logs request, `skip` and `value`
//! agree on where a value ends, and a message cut short is `Incomplete`, never an error.

use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use super::forward::{next_frame, Frame};
use super::msgpack::{ReadError, Reader};
use super::{convert_body, BodyFormat};
use crate::error::CoreError;
use crate::signal::Signal;

fn config(cases: u32) -> ProptestConfig {
    let long_run = std::env::var_os("PROPTEST_CASES").is_some() || std::env::var_os("PROPTEST_RNG_SEED").is_some();
    let base = ProptestConfig::default();
    ProptestConfig {
        cases: if long_run { base.cases } else { cases },
        rng_seed: if long_run {
            base.rng_seed
        } else {
            RngSeed::Fixed(0x666c_7565_6e74)
        },
        failure_persistence: None,
        ..base
    }
}

/// Bytes that look like msgpack more often than uniform noise does.
fn msgpackish() -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        any::<u8>(),
        prop::sample::select(vec![
            0x90u8, 0x92, 0x93, 0x94, 0x81, 0x82, 0xa1, 0xa3, 0xc0, 0xc4, 0xc6, 0xd7, 0xdc, 0xdf, 0x00, 0x01, b'a'
        ]),
    ];
    prop::collection::vec(byte, 0..200)
}

fn allowed(err: &CoreError) -> bool {
    matches!(
        err,
        CoreError::Decode(_) | CoreError::TooLarge { .. } | CoreError::Unsupported(_)
    )
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn skip_and_value_agree(bytes in msgpackish()) {
        let mut a = Reader::new(&bytes);
        let mut b = Reader::new(&bytes);
        let skipped = a.skip();
        let valued = b.value().map(|_| ());
        match (&skipped, &valued) {
            (Ok(()), Ok(())) => prop_assert_eq!(a.position(), b.position()),
            (Err(ReadError::Truncated), Err(ReadError::Truncated)) => {}
            // value() also caps nesting depth; skip() does not recurse.
            (Ok(()), Err(ReadError::Invalid(_))) => {}
            (Err(ReadError::Invalid(_)), Err(ReadError::Invalid(_))) => {}
            _ => prop_assert!(false, "skip {:?} vs value {:?}", skipped, valued),
        }
    }

    #[test]
    fn bodies_convert_or_fail_cleanly(bytes in msgpackish(), which in 0usize..5) {
        let format = [BodyFormat::Json, BodyFormat::Lines, BodyFormat::Msgpack, BodyFormat::Text, BodyFormat::Form][which];
        match convert_body(&bytes, format, "t", 1) {
            Ok(c) => {
                if !c.payload.is_empty() {
                    prop_assert!(crate::validate::validate(Signal::Logs, &c.payload).is_ok());
                }
            }
            Err(e) => prop_assert!(allowed(&e), "{e:?}"),
        }
    }

    #[test]
    fn forward_frames_never_panic_and_prefixes_are_incomplete(bytes in msgpackish()) {
        match next_frame(&bytes, 1 << 16, 1) {
            Ok(Frame::Message(m)) => {
                let used = m.wire_bytes;
                let c = m.builder.finish();
                if !c.payload.is_empty() {
                    prop_assert!(crate::validate::validate(Signal::Logs, &c.payload).is_ok());
                }
                for cut in 0..used {
                    prop_assert!(matches!(next_frame(&bytes[..cut], 1 << 16, 1), Ok(Frame::Incomplete)));
                }
            }
            Ok(_) => {}
            Err(e) => prop_assert!(allowed(&e), "{e:?}"),
        }
    }
}
