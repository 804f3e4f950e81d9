//! `parse_partial_success`: any response body a destination may send. Input: format byte, body.
#![no_main]

use _core::encode::parse_partial_success;
use _core::ingest::Format;
use fuzz_support::{assert_decode_error, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let format = input.pick(&[Format::Protobuf, Format::Json]);
    assert_decode_error(&parse_partial_success(input.rest(), format));
});
