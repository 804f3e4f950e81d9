//! `json_to_protobuf`: what it accepts is valid protobuf and a JSON round-trip fixed point.
//! Input: signal byte, body. Run with `-dict=fuzz/otlp_json.dict`.
#![no_main]

use _core::json_decode::json_to_protobuf;
use fuzz_support::{assert_decode_error, check_decoded_json, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let signal = input.signal();
    let result = json_to_protobuf(signal, input.rest());
    assert_decode_error(&result);
    if let Ok(pb) = result {
        check_decoded_json(signal, &pb);
    }
});
