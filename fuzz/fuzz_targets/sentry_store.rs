//! `sentry::process_store` (the legacy store endpoint: JSON, or base64 of zlib-compressed JSON),
//! and `envelope::parse` on the same bytes. Input: an options byte, then the body.
#![no_main]

use _core::envelope;
use _core::sentry::process_store;
use fuzz_support::{assert_sentry_error, sentry_options, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let options = sentry_options(input.byte());
    let body = input.rest();
    assert_sentry_error(&envelope::parse(body));
    let result = process_store(body, "1", &options);
    assert_sentry_error(&result);
    if let Ok(out) = result {
        envelope::parse(&out.envelope).expect("the wrapped event parses as an envelope");
        assert_eq!(out.items, 1);
    }
});
