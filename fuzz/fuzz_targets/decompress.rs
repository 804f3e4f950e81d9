//! `decompress`: any body, encoding and limit. Input: encoding byte, limit byte, body.
#![no_main]

use _core::decompress::decompress;
use _core::CoreError;
use fuzz_support::{known_encoding, Input, ENCODINGS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let encoding = input.pick(ENCODINGS);
    let limit = input.pick(&[0usize, 1, 64, 4096, 1 << 20, usize::MAX]);
    let body = input.rest();
    match decompress(body, encoding, limit) {
        Ok(out) => assert!(out.len() <= limit),
        Err(CoreError::Decode(m)) => assert!(!m.is_empty()),
        Err(CoreError::TooLarge { limit: l }) => assert_eq!(l, limit),
        Err(CoreError::Unsupported(_)) => assert!(!known_encoding(encoding)),
        Err(e) => panic!("{e:?}"),
    }
});
