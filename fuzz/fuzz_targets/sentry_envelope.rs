//! `sentry::process` (envelope parsing, scrubbing, sampling, conversion to OTLP logs): the envelope
//! it forwards parses, its logs are a valid request, and forwarding it again changes nothing.
//! Input: an options byte, then the envelope.
#![no_main]

use _core::envelope;
use _core::sentry::{process, SentryOptions};
use _core::validate::validate;
use _core::Signal;
use fuzz_support::{assert_sentry_error, sentry_options, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let options: SentryOptions = sentry_options(input.byte());
    let body = input.rest();
    let result = process(body, "42", &options);
    assert_sentry_error(&result);
    let Ok(out) = result else { return };
    envelope::parse(&out.envelope).expect("the forwarded envelope parses");
    assert!(out.items_forwarded <= out.items);
    if !out.otlp_logs.is_empty() {
        assert_eq!(validate(Signal::Logs, &out.otlp_logs), Ok(()));
    }
    let again = process(&out.envelope, "42", &options).expect("the forwarded envelope processes");
    assert_eq!(again.items_scrubbed, 0);
    assert_eq!(again.envelope, out.envelope);
});
