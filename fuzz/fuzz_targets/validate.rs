//! `validate`: whatever it accepts, the JSON encoder takes too. Input: signal byte, body.
#![no_main]

use _core::json_encode::protobuf_to_json;
use _core::validate::validate;
use fuzz_support::{assert_decode_error, check_encoder_output, Input};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let signal = input.signal();
    let body = input.rest();
    let result = validate(signal, body);
    assert_decode_error(&result);
    if result.is_ok() {
        let json = protobuf_to_json(signal, body).expect("valid protobuf encodes");
        check_encoder_output(signal, &json);
    }
});
