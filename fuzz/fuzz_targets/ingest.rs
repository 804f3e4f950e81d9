//! `Ingester::ingest` on every signal and format with varied options. It fails exactly when
//! decompression or decoding does; what it accepts is a valid request that ingests to itself.
//! Input: signal, format, encoding, sampling, flags and limit bytes, then the body.
#![no_main]

use _core::decompress::decompress;
use _core::ingest::{Format, IngestOptions, Ingester};
use _core::json_decode::json_to_protobuf;
use _core::validate::validate;
use _core::{CoreError, Result, Signal};
use fuzz_support::{Input, ENCODINGS};
use libfuzzer_sys::fuzz_target;

fn decoded(signal: Signal, body: &[u8], format: Format, encoding: Option<&str>, limit: usize) -> Result<()> {
    let plain = decompress(body, encoding, limit)?;
    match format {
        Format::Protobuf => validate(signal, &plain),
        Format::Json => json_to_protobuf(signal, &plain).map(|_| ()),
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let signal = input.signal();
    let format = input.pick(&[Format::Protobuf, Format::Json]);
    let encoding = input.pick(ENCODINGS);
    let ratios = [1.0, 0.0, 0.5, 0.01, f64::NAN, -1.0];
    let sampling_traces = input.pick(&ratios);
    let sampling_logs = input.pick(&ratios);
    let flags = input.byte();
    let max_body_bytes = input.pick(&[64usize << 20, 0, 16, 1024]);
    let resource_attributes = match flags & 6 {
        0 => Vec::new(),
        2 => vec![("deployment.environment".to_owned(), "fuzz".to_owned())],
        _ => vec![
            ("service.name".to_owned(), "x".to_owned()),
            ("k".to_owned(), String::new()),
        ],
    };
    let options = IngestOptions {
        sampling_traces,
        sampling_logs,
        keep_errors: flags & 1 == 1,
        resource_attributes,
        max_body_bytes,
    };
    let body = input.rest();

    let result = Ingester::new(options.clone()).ingest(signal, body, format, encoding);
    match (&result, decoded(signal, body, format, encoding, max_body_bytes)) {
        (Ok(_), Ok(())) => {}
        (Err(got), Err(want)) => assert_eq!(got, &want),
        (got, want) => panic!("ingest {got:?}, decoders {want:?}"),
    }
    let got = match result {
        Ok(got) => got,
        Err(CoreError::Decode(_) | CoreError::TooLarge { .. } | CoreError::Unsupported(_)) => return,
        Err(e) => panic!("{e:?}"),
    };
    assert!(got.decoded_bytes <= max_body_bytes);
    assert_eq!(got.received, got.accepted + got.rejected + got.sampled_out);
    assert_eq!(got.error_message.is_empty(), got.rejected == 0);
    assert_eq!(validate(signal, &got.payload), Ok(()));
    let again = Ingester::new(IngestOptions {
        max_body_bytes: usize::MAX,
        ..options
    })
    .ingest(signal, &got.payload, Format::Protobuf, None)
    .expect("the payload ingests");
    assert_eq!(again.payload, got.payload);
    assert_eq!(
        (again.accepted, again.rejected, again.sampled_out),
        (got.accepted, 0, 0)
    );
});
