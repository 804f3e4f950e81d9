//! `protobuf_to_json`: what it writes decodes again. Input: signal byte, body.
#![no_main]

use _core::json_encode::protobuf_to_json;
use fuzz_support::{assert_decode_error, check_encoder_output, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let signal = input.signal();
    let result = protobuf_to_json(signal, input.rest());
    assert_decode_error(&result);
    if let Ok(json) = result {
        check_encoder_output(signal, &json);
    }
});
