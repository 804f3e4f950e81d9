//! Property-based fuzzing of the msgpack reader, the Fluent body framings and the forward
//! framing (beside `crate::fuzz_tests`, same conventions: a fixed seed in `cargo test`,
//! `PROPTEST_CASES=N` for longer runs). Whatever the bytes: nothing panics, errors are `Decode`
//! (or `TooLarge`/`Unsupported`), what converts is a valid OTLP logs request, `skip` and `value`
//! agree on where a value ends, and a message cut short is `Incomplete`, never an error. The
//! handshake: no bytes but a PING with the right digest authenticate, and every right PING does.

use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use super::forward::{next_frame, Frame};
use super::handshake::{shared_key_digest, Answer, Auth, Challenge};
use super::msgpack::{self, Mp};
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
    fn node_and_value_agree(bytes in msgpackish()) {
        let mut a = Reader::new(&bytes);
        let mut b = Reader::new(&bytes);
        let valued = a.value().map(|v| super::node::from_mp(&v));
        let noded = b.node();
        prop_assert_eq!(&valued, &noded);
        prop_assert_eq!(a.position(), b.position());
        let mut c = Reader::new(&bytes);
        let mut d = Reader::new(&bytes);
        let entry = c.value().map(|v| super::entry(&v));
        let read = super::read_entry(&mut d);
        prop_assert_eq!(entry, read);
        prop_assert_eq!(c.position(), d.position());
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

    #[test]
    fn ping_bytes_never_authenticate_by_chance(bytes in msgpackish()) {
        let auth = Auth { shared_key: b"key".to_vec(), hostname: "gw".into(), users: Vec::new() };
        let challenge = Challenge::from_parts([7; 16], [9; 16]);
        match challenge.answer(&auth, &bytes) {
            Answer::Incomplete => prop_assert!(Reader::new(&bytes).skip() == Err(ReadError::Truncated)),
            Answer::Accepted { .. } => prop_assert!(false, "random bytes authenticated"),
            Answer::Refused { pong, .. } => {
                let v = Reader::new(&pong).value().unwrap();
                let Mp::Array(items) = v else { panic!("PONG not an array") };
                prop_assert_eq!(&items[1], &Mp::Bool(false));
            }
        }
    }

    #[test]
    fn every_right_ping_authenticates_and_any_flipped_digest_byte_does_not(
        hostname in prop::collection::vec(any::<u8>(), 0..40),
        salt in prop::collection::vec(any::<u8>(), 0..24),
        key in prop::collection::vec(any::<u8>(), 1..40),
        nonce in any::<[u8; 16]>(),
        flip in 0usize..128,
    ) {
        let auth = Auth { shared_key: key.clone(), hostname: "gw".into(), users: Vec::new() };
        let challenge = Challenge::from_parts(nonce, [0; 16]);
        let digest = shared_key_digest(&salt, &hostname, &nonce, &key);
        let ping = |digest: &[u8]| {
            let mut out = vec![0x96];
            for part in [b"PING".as_slice(), &hostname, &salt, digest, b"", b""] {
                msgpack::put_str(&mut out, part);
            }
            out
        };
        let good = ping(&digest);
        match challenge.answer(&auth, &good) {
            Answer::Accepted { used, pong } => {
                prop_assert_eq!(used, good.len());
                let server = shared_key_digest(&salt, b"gw", &nonce, &key);
                prop_assert!(pong.ends_with(&server));
            }
            other => prop_assert!(false, "{:?}", other),
        }
        let mut bad = digest;
        bad[flip] ^= 0x01;
        let refused = matches!(challenge.answer(&auth, &ping(&bad)), Answer::Refused { reason: "shared_key mismatch", .. });
        prop_assert!(refused);
    }
}
