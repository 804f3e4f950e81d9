//! Structural check of a protobuf `Export*ServiceRequest` against the schema, before any stage
//! slices it: wire types match, nested messages parse, strings are UTF-8, depth is bounded.
//! Unknown fields are skipped, as protobuf parsers do. Walks the bytes in place, allocating
//! nothing unless it fails.

use crate::error::Result;
use crate::schema::{self, Kind, Msg, Trail, MAX_DEPTH};
use crate::signal::Signal;
use crate::wire::{self, Fields};

/// Checks that `body` is a well-formed `Export*ServiceRequest` of `signal`.
pub fn validate(signal: Signal, body: &[u8]) -> Result<()> {
    validate_message(schema::request(signal), body)
}

/// Checks that `body` is a well-formed `msg`.
pub fn validate_message(msg: &'static Msg, body: &[u8]) -> Result<()> {
    check(msg, body, 0).map_err(Trail::into_protobuf_error)
}

fn check(msg: &'static Msg, data: &[u8], depth: usize) -> std::result::Result<(), Trail> {
    if depth > MAX_DEPTH {
        return Err(Trail::new(format!(
            "invalid protobuf: {} is nested deeper than {MAX_DEPTH} messages",
            msg.name
        )));
    }
    let mut ok_end = 0;
    for item in Fields::new(data) {
        let field = item.map_err(|e| schema::wire_error(msg, data, ok_end, e))?;
        ok_end = schema::offset_in(data, field.raw) + field.raw.len();
        let Some(desc) = msg.field(field.number) else { continue };
        check_field(msg, desc, &field, depth).map_err(|t| schema::locate(t, data, desc, &field))?;
    }
    Ok(())
}

/// Whether `validate` passes field `field` of a `msg` at `depth` (the request is 0), the field's
/// contents included; unknown fields pass. For a walker that visits a request's fields itself
/// (ingest's record walk): it checks each field here and, on `false`, has `validate` name the
/// error, so the messages are `validate`'s own.
#[inline]
pub(crate) fn field_ok(msg: &'static Msg, field: &wire::Field<'_>, depth: usize) -> bool {
    match msg.field(field.number) {
        None => true,
        Some(desc) => field_valid(msg, desc, field, depth),
    }
}

/// `check` reduced to its answer, for `field_ok`: no `Trail` to build or carry back up, no
/// offsets kept for an error message, so the recursion returns a bool in a register (perf: the
/// `Result` form was a third of the walk on 1,000-span requests). Must accept exactly what
/// `check` accepts: `validate` names the fault of whatever this refuses.
fn valid(msg: &'static Msg, data: &[u8], depth: usize) -> bool {
    if depth > MAX_DEPTH {
        return false;
    }
    for item in Fields::new(data) {
        let Ok(field) = item else { return false };
        if let Some(desc) = msg.field(field.number) {
            if !field_valid(msg, desc, &field, depth) {
                return false;
            }
        }
    }
    true
}

/// `check_field` reduced to its answer (see `valid`).
#[inline]
fn field_valid(msg: &'static Msg, desc: &'static schema::Field, field: &wire::Field<'_>, depth: usize) -> bool {
    let expected = desc.wire_type;
    if field.wire_type != expected && schema::check_wire(msg, desc, field).is_err() {
        return false;
    }
    if field.wire_type != wire::LEN {
        return true;
    }
    // Tests in order of frequency rather than a `match` (a jump table, see `schema::Field::wire_type`).
    if let Kind::Message(child) = desc.kind {
        return valid(child, field.data, depth + 1);
    }
    if let Kind::String = desc.kind {
        return field.data.is_ascii() || std::str::from_utf8(field.data).is_ok();
    }
    match desc.kind {
        Kind::Bytes | Kind::Hex => true,
        _ if expected == wire::VARINT => {
            let mut pos = 0;
            while pos < field.data.len() {
                if wire::read_varint(field.data, &mut pos).is_err() {
                    return false;
                }
            }
            true
        }
        _ => true,
    }
}

#[inline]
fn check_field(
    msg: &'static Msg,
    desc: &'static schema::Field,
    field: &wire::Field<'_>,
    depth: usize,
) -> std::result::Result<(), Trail> {
    schema::check_wire(msg, desc, field)?;
    if field.wire_type != wire::LEN {
        return Ok(());
    }
    match desc.kind {
        Kind::Message(child) => check(child, field.data, depth + 1),
        // Most strings (keys, names) are ASCII: `is_ascii` reads them a word at a time.
        Kind::String if field.data.is_ascii() => Ok(()),
        Kind::String => match std::str::from_utf8(field.data) {
            Ok(_) => Ok(()),
            Err(e) => Err(Trail::new(format!(
                "invalid protobuf: {} is not valid UTF-8 (byte {})",
                schema::describe(msg, desc),
                e.valid_up_to()
            ))),
        },
        Kind::Bytes | Kind::Hex => Ok(()),
        // A packed run of varints (fixed widths were checked by `check_wire`).
        _ if desc.kind.wire_type() == wire::VARINT => {
            let mut pos = 0;
            while pos < field.data.len() {
                if wire::read_varint(field.data, &mut pos).is_err() {
                    return Err(Trail::new(format!(
                        "invalid protobuf: {} holds a truncated or overlong packed varint",
                        schema::describe(msg, desc)
                    )));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{put_bytes, put_message, put_tag, put_uint, put_varint};

    fn err(signal: Signal, body: &[u8]) -> String {
        let e = validate(signal, body).unwrap_err();
        assert!(matches!(e, crate::error::CoreError::Decode(_)), "{e:?}");
        e.to_string()
    }

    /// ExportTraceServiceRequest { resource_spans { scope_spans { spans { <span> } } } }
    fn traces_with_span(span: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut out = Vec::new();
        put_message(&mut out, 1, |rs| put_message(rs, 2, |ss| put_message(ss, 2, span)));
        out
    }

    #[test]
    fn accepts_empty_and_valid_requests() {
        for s in Signal::ALL {
            validate(s, b"").unwrap();
        }
        let body = traces_with_span(|s| {
            put_bytes(s, 1, &[1; 16]);
            put_bytes(s, 2, &[2; 8]);
            put_bytes(s, 5, "name ✓".as_bytes());
            put_uint(s, 6, 2);
            put_tag(s, 7, wire::I64);
            s.extend_from_slice(&5u64.to_le_bytes());
            put_tag(s, 16, wire::I32);
            s.extend_from_slice(&1u32.to_le_bytes());
        });
        validate(Signal::Traces, &body).unwrap();
    }

    #[test]
    fn skips_unknown_fields() {
        let body = traces_with_span(|s| {
            put_uint(s, 30, 7);
            put_bytes(s, 31, &[0xff, 0xfe]);
            put_tag(s, 32, wire::I32);
            s.extend_from_slice(&[0; 4]);
        });
        validate(Signal::Traces, &body).unwrap();
    }

    #[test]
    fn names_field_with_invalid_utf8() {
        let body = traces_with_span(|s| put_bytes(s, 5, &[b'a', 0xff]));
        assert_eq!(
            err(Signal::Traces, &body),
            "invalid protobuf: Span.name (field 5) is not valid UTF-8 (byte 1) \
             (at resourceSpans[0].scopeSpans[0].spans[0].name)"
        );
    }

    #[test]
    fn names_field_with_wrong_wire_type() {
        let body = traces_with_span(|s| put_uint(s, 7, 5));
        assert_eq!(
            err(Signal::Traces, &body),
            "invalid protobuf: Span.start_time_unix_nano (field 7) has wire type 0 (varint), \
             expected 1 (64-bit) (at resourceSpans[0].scopeSpans[0].spans[0].startTimeUnixNano)"
        );
        let body = traces_with_span(|s| put_uint(s, 9, 1));
        assert!(err(Signal::Traces, &body).contains("Span.attributes (field 9) has wire type 0"));
    }

    #[test]
    fn names_truncated_field() {
        let mut body = traces_with_span(|s| put_bytes(s, 5, b"abc"));
        // Cut the span's name short while keeping the outer lengths consistent.
        let mut inner = Vec::new();
        put_tag(&mut inner, 5, wire::LEN);
        put_varint(&mut inner, 10);
        inner.extend_from_slice(b"abc");
        body.clear();
        put_message(&mut body, 1, |rs| put_message(rs, 2, |ss| put_bytes(ss, 2, &inner)));
        let e = err(Signal::Traces, &body);
        assert!(
            e.starts_with("truncated protobuf: Span.name (field 5) is longer than"),
            "{e}"
        );
        assert!(e.ends_with("(at resourceSpans[0].scopeSpans[0].spans[0].name)"), "{e}");
        // Cut at the top level: the whole body ends early.
        let body = traces_with_span(|s| put_bytes(s, 5, b"abc"));
        let e = err(Signal::Traces, &body[..body.len() - 1]);
        assert!(e.contains("ExportTraceServiceRequest.resource_spans (field 1)"), "{e}");
        // A fixed64 cut short.
        let mut span = Vec::new();
        put_tag(&mut span, 8, wire::I64);
        span.extend_from_slice(&[1, 2, 3]);
        let body = traces_with_span(|s| s.extend_from_slice(&span));
        let e = err(Signal::Traces, &body);
        assert!(e.contains("in Span.end_time_unix_nano (field 8)"), "{e}");
    }

    #[test]
    fn index_in_path_counts_repeated_fields() {
        let mut body = Vec::new();
        put_message(&mut body, 1, |rs| {
            put_message(rs, 2, |ss| {
                put_message(ss, 2, |s| put_bytes(s, 5, b"ok"));
                put_message(ss, 2, |s| put_bytes(s, 5, b"ok"));
                put_message(ss, 2, |s| {
                    put_message(s, 9, |kv| put_bytes(kv, 1, b"k"));
                    put_message(s, 9, |kv| put_message(kv, 2, |v| put_bytes(v, 1, &[0xc3])));
                });
            })
        });
        let e = err(Signal::Traces, &body);
        assert!(e.contains("AnyValue.string_value (field 1) is not valid UTF-8"), "{e}");
        assert!(
            e.ends_with("(at resourceSpans[0].scopeSpans[0].spans[2].attributes[1].value.stringValue)"),
            "{e}"
        );
    }

    #[test]
    fn packed_and_unpacked_repeated_scalars() {
        let point = |p: &mut Vec<u8>, packed: bool| {
            if packed {
                put_message(p, 6, |b| b.extend_from_slice(&[0u8; 16]));
                put_message(p, 7, |b| b.extend_from_slice(&1.5f64.to_le_bytes()));
            } else {
                for _ in 0..2 {
                    put_tag(p, 6, wire::I64);
                    p.extend_from_slice(&3u64.to_le_bytes());
                }
                put_tag(p, 7, wire::I64);
                p.extend_from_slice(&1.5f64.to_le_bytes());
            }
        };
        for packed in [true, false] {
            let mut body = Vec::new();
            put_message(&mut body, 1, |rm| {
                put_message(rm, 2, |sm| {
                    put_message(sm, 2, |m| {
                        put_message(m, 9, |h| put_message(h, 1, |p| point(p, packed)))
                    })
                })
            });
            validate(Signal::Metrics, &body).unwrap();
        }
        // Packed fixed64 whose length is not a multiple of 8.
        let mut body = Vec::new();
        put_message(&mut body, 1, |rm| {
            put_message(rm, 2, |sm| {
                put_message(sm, 2, |m| {
                    put_message(m, 9, |h| put_message(h, 1, |p| put_bytes(p, 6, &[0; 12])))
                })
            })
        });
        let e = err(Signal::Metrics, &body);
        assert!(
            e.contains("HistogramDataPoint.bucket_counts (field 6) is packed with 12 bytes"),
            "{e}"
        );
        // Packed varints with a truncated last element.
        let mut body = Vec::new();
        put_message(&mut body, 1, |rm| {
            put_message(rm, 2, |sm| {
                put_message(sm, 2, |m| {
                    put_message(m, 10, |h| {
                        put_message(h, 1, |p| put_message(p, 8, |b| put_bytes(b, 2, &[1, 0x80])))
                    })
                })
            })
        });
        let e = err(Signal::Metrics, &body);
        assert!(
            e.contains("ExponentialHistogramDataPoint.Buckets.bucket_counts (field 2) holds a truncated"),
            "{e}"
        );
        assert!(e.contains("dataPoints[0].positive.bucketCounts"), "{e}");
    }

    #[test]
    fn bounds_nesting_depth() {
        use crate::test_support::nested_log_body as nested;
        // request(0) → ResourceLogs(1) → ScopeLogs(2) → LogRecord(3) → AnyValue(4) → 2 per level.
        let fits = (MAX_DEPTH - 4) / 2;
        validate(Signal::Logs, &nested(fits)).unwrap();
        let e = err(Signal::Logs, &nested(fits + 1));
        assert!(e.contains("nested deeper than 100 messages"), "{e}");
        let e = err(Signal::Logs, &nested(10_000));
        assert!(e.contains("nested deeper"), "{e}");
    }

    #[test]
    fn the_walks_bool_check_agrees_with_check() {
        // `valid` (what the ingest walk asks) must pass exactly what `check` passes: every cut and
        // random byte changes of bodies holding each kind of field (strings, nested values,
        // bytes, fixed and varint scalars, packed runs of both).
        let traces = traces_with_span(|s| {
            put_bytes(s, 1, &[1; 16]);
            put_bytes(s, 5, "name ✓".as_bytes());
            put_tag(s, 7, wire::I64);
            s.extend_from_slice(&5u64.to_le_bytes());
            put_message(s, 9, |kv| {
                put_bytes(kv, 1, b"k");
                put_message(kv, 2, |v| {
                    put_message(v, 5, |arr| {
                        put_message(arr, 1, |x| put_uint(x, 3, 7));
                        put_message(arr, 1, |x| put_bytes(x, 7, &[0xff]));
                    })
                });
            });
            put_message(s, 11, |e| put_bytes(e, 2, b"event"));
        });
        let mut metrics = Vec::new();
        put_message(&mut metrics, 1, |rm| {
            put_message(rm, 2, |sm| {
                put_message(sm, 2, |m| {
                    put_bytes(m, 1, b"m");
                    put_message(m, 9, |h| {
                        put_message(h, 1, |p| {
                            put_message(p, 6, |b| b.extend_from_slice(&[0u8; 16]));
                            put_message(p, 7, |b| b.extend_from_slice(&1.5f64.to_le_bytes()));
                        })
                    });
                    put_message(m, 10, |h| {
                        put_message(h, 1, |p| put_message(p, 8, |b| put_bytes(b, 2, &[1, 0x81, 1])))
                    });
                })
            })
        });
        let mut rand = crate::test_support::xorshift(0x2545_f491_4f6c_dd1du64);
        let (mut passed, mut failed) = (0, 0);
        for (signal, body) in [(Signal::Traces, &traces), (Signal::Metrics, &metrics)] {
            let msg = schema::request(signal);
            let agree = |data: &[u8]| {
                let ok = check(msg, data, 0).is_ok();
                assert_eq!(valid(msg, data, 0), ok, "{signal:?} {data:02x?}");
                ok
            };
            assert!(agree(body));
            for cut in 0..body.len() {
                agree(&body[..cut]);
            }
            for _ in 0..5_000 {
                let mut m = body.clone();
                for _ in 0..1 + rand() % 2 {
                    let at = (rand() as usize) % m.len();
                    m[at] = rand() as u8;
                }
                if agree(&m) {
                    passed += 1;
                } else {
                    failed += 1;
                }
            }
        }
        // Both answers were exercised.
        assert!(passed > 100 && failed > 100, "{passed} passed, {failed} failed");
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        let e = err(Signal::Traces, &[0x0a, 0xff]);
        assert!(e.starts_with("truncated protobuf"), "{e}");
        let e = err(Signal::Logs, &[0x00]);
        assert!(e.contains("field number 0"), "{e}");
        let e = err(Signal::Metrics, &[0x0b]);
        assert!(e.contains("unsupported wire type 3"), "{e}");
        // Every prefix of a valid body either validates or fails cleanly.
        let body = traces_with_span(|s| {
            put_bytes(s, 1, &[1; 16]);
            put_message(s, 9, |kv| {
                put_bytes(kv, 1, b"k");
                put_message(kv, 2, |v| put_uint(v, 3, u64::MAX));
            });
        });
        for n in 0..body.len() {
            let _ = validate(Signal::Traces, &body[..n]);
        }
    }
}
