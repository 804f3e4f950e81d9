//! Protobuf → OTLP/JSON, written straight into one buffer: compact, lowerCamelCase keys, hex
//! trace/span ids, 64-bit integers as strings, enums as integers, bytes as base64, non-finite
//! doubles as "NaN"/"Infinity"/"-Infinity", implicit-presence defaults omitted.
//!
//! Fields are written in wire order, which for canonically encoded input is field-number order,
//! so `json_decode` (which writes in key order) reproduces the input bytes. Input that repeats a
//! singular field, splits a repeated field or sets two members of a oneof is written in schema
//! order with protobuf's merge rules instead. The input is checked as it is read (the function
//! is also reached without `validate`), and errors name the field and its path.

use std::io::Write as _;

use base64::Engine as _;

use crate::error::Result;
use crate::schema::{self, Field, Kind, Msg, Trail, MAX_DEPTH};
use crate::signal::Signal;
use crate::wire::{self, Fields};

type Walk<T = ()> = std::result::Result<T, Stop>;

/// Why a walk stopped early. The trail is boxed so that every `Walk` result returned up the
/// recursion stays two words wide.
enum Stop {
    Invalid(Box<Trail>),
    /// The optimistic single pass met a field out of wire order (see `message_to_json`).
    Reorder,
}

impl From<Trail> for Stop {
    fn from(trail: Trail) -> Self {
        Stop::Invalid(Box::new(trail))
    }
}

impl Stop {
    fn at(self, desc: &'static Field, index: Option<usize>) -> Self {
        match self {
            Stop::Invalid(t) => Stop::Invalid(Box::new((*t).at(desc, index))),
            Stop::Reorder => Stop::Reorder,
        }
    }

    fn locate(self, data: &[u8], desc: &'static Field, field: &wire::Field<'_>) -> Self {
        match self {
            Stop::Invalid(t) => Stop::Invalid(Box::new(schema::locate(*t, data, desc, field))),
            Stop::Reorder => Stop::Reorder,
        }
    }
}

/// Encodes an `Export*ServiceRequest` of `signal` as OTLP/JSON.
pub fn protobuf_to_json(signal: Signal, body: &[u8]) -> Result<Vec<u8>> {
    message_to_json(schema::request(signal), body)
}

/// Encodes any described message as OTLP/JSON.
pub fn message_to_json(msg: &'static Msg, body: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    message_to_json_into(msg, body, &mut out)?;
    Ok(out)
}

/// `protobuf_to_json` into a buffer the caller keeps (cleared first), so a thread that encodes
/// batch after batch reuses one allocation, its pages already mapped.
pub fn protobuf_to_json_into(signal: Signal, body: &[u8], out: &mut Vec<u8>) -> Result<()> {
    message_to_json_into(schema::request(signal), body, out)
}

fn message_to_json_into(msg: &'static Msg, body: &[u8], out: &mut Vec<u8>) -> Result<()> {
    // OTLP/JSON runs 2.2 to 2.6 times the size of its protobuf (hex ids, key names): sized once.
    out.clear();
    out.reserve(body.len().saturating_mul(3) + 64);
    // Canonical input is written in one pass. If a field turns up out of order, start over
    // checking each message's order before writing it: at most three passes in all, however
    // the disorder is spread over the levels.
    let result = match write_message(msg, &[body], out, 0, false) {
        Err(Stop::Reorder) => {
            out.clear();
            write_message(msg, &[body], out, 0, true)
        }
        other => other,
    };
    match result {
        Ok(()) => Ok(()),
        Err(Stop::Invalid(trail)) => Err((*trail).into_protobuf_error()),
        Err(Stop::Reorder) => Err(Trail::new("internal error: protobuf fields out of order").into_protobuf_error()),
    }
}

/// Writes a message given as one or more parts: protobuf merges a singular message field that
/// occurs more than once as if its parts were concatenated, and reading them in sequence does
/// the same without copying them together. `checked`: look at the order of the fields first
/// (else assume wire order will do and stop with `Reorder` if not).
fn write_message(msg: &'static Msg, parts: &[&[u8]], out: &mut Vec<u8>, depth: usize, checked: bool) -> Walk {
    if depth > MAX_DEPTH {
        return Err(Trail::new(format!(
            "invalid protobuf: {} is nested deeper than {MAX_DEPTH} messages",
            msg.name
        ))
        .into());
    }
    if let (false, [data]) = (checked, parts) {
        out.push(b'{');
        write_fields_in_order(msg, data, out, depth, false)?;
        out.push(b'}');
        return Ok(());
    }
    // A pass over the tags only: structure, wire types, and whether wire order will do.
    let mut in_order = parts.len() == 1;
    let mut seen = 0u64;
    let mut last = 0u32;
    let mut oneof_member = 0u32;
    for &data in parts {
        let mut ok_end = 0;
        for item in Fields::new(data) {
            let field = item.map_err(|e| schema::wire_error(msg, data, ok_end, e))?;
            ok_end = schema::offset_in(data, field.raw) + field.raw.len();
            let Some(desc) = msg.field(field.number) else { continue };
            schema::check_wire(msg, desc, &field).map_err(|t| schema::locate(t, data, desc, &field))?;
            let bit = 1u64 << field.number;
            if field.number != last {
                in_order &= seen & bit == 0;
                seen |= bit;
                last = field.number;
            } else {
                in_order &= desc.repeated;
            }
            if desc.oneof.is_some() {
                in_order &= oneof_member == 0 || oneof_member == field.number;
                oneof_member = field.number;
            }
        }
    }
    out.push(b'{');
    match parts {
        [data] if in_order => write_fields_in_order(msg, data, out, depth, true)?,
        _ => write_fields_merged(msg, parts, out, depth)?,
    }
    out.push(b'}');
    Ok(())
}

/// Reads one field at `*pos` as `wire::Fields` does, inlined into the encoder's loop (the
/// iterator's `Option<Result<Field>>` travels through memory on every field). `None` when the
/// bytes are malformed: `wire_failure` then asks `Fields` for the precise error.
#[inline(always)]
fn read_field<'a>(data: &'a [u8], pos: &mut usize) -> Option<wire::Field<'a>> {
    let start = *pos;
    let key = read_varint(data, pos)?;
    let number = key >> 3;
    if number == 0 || number > u64::from(u32::MAX >> 3) {
        return None;
    }
    let wire_type = (key & 7) as u8;
    let (int, payload): (u64, &[u8]) = match wire_type {
        wire::VARINT => (read_varint(data, pos)?, &[]),
        wire::I64 => {
            let bytes: [u8; 8] = data.get(*pos..pos.checked_add(8)?)?.try_into().ok()?;
            *pos += 8;
            (u64::from_le_bytes(bytes), &[])
        }
        wire::I32 => {
            let bytes: [u8; 4] = data.get(*pos..pos.checked_add(4)?)?.try_into().ok()?;
            *pos += 4;
            (u64::from(u32::from_le_bytes(bytes)), &[])
        }
        wire::LEN => {
            let len = read_varint(data, pos)?;
            let end = pos.checked_add(usize::try_from(len).ok()?)?;
            let payload = data.get(*pos..end)?;
            *pos = end;
            (len, payload)
        }
        _ => return None,
    };
    Some(wire::Field {
        number: number as u32,
        wire_type,
        int,
        data: payload,
        raw: data.get(start..*pos)?,
    })
}

#[inline(always)]
fn read_varint(data: &[u8], pos: &mut usize) -> Option<u64> {
    match data.get(*pos) {
        Some(&byte) if byte < 0x80 => {
            *pos += 1;
            Some(u64::from(byte))
        }
        _ => wire::read_varint(data, pos).ok(),
    }
}

/// The error `read_field` met in `data`, as `Fields` words it.
#[cold]
#[inline(never)]
fn wire_failure(msg: &'static Msg, data: &[u8]) -> Stop {
    let mut ok_end = 0;
    for item in Fields::new(data) {
        match item {
            Ok(field) => ok_end = schema::offset_in(data, field.raw) + field.raw.len(),
            Err(e) => return schema::wire_error(msg, data, ok_end, e).into(),
        }
    }
    Trail::new("internal error: protobuf readers disagree").into()
}

/// The common case: each field number appears in one run, so runs map to JSON members.
fn write_fields_in_order(msg: &'static Msg, data: &[u8], out: &mut Vec<u8>, depth: usize, checked: bool) -> Walk {
    let mut first = true;
    let mut open = 0u32; // the repeated field whose array is open
    let mut first_item = true;
    let mut seen = 0u64;
    let mut oneof_member = 0u32;
    let mut pos = 0;
    while pos < data.len() {
        let Some(field) = read_field(data, &mut pos) else {
            return Err(wire_failure(msg, data));
        };
        let Some(desc) = msg.field(field.number) else { continue };
        if field.wire_type != desc.kind.wire_type() {
            // Packed, or wrong.
            schema::check_wire(msg, desc, &field).map_err(|t| schema::locate(t, data, desc, &field))?;
        }
        // What the checked pass would have found: a number seen before (other than in the
        // run of a repeated field), or a second member of the oneof.
        let bit = 1u64 << field.number;
        let again = seen & bit != 0;
        seen |= bit;
        if (again && !(desc.repeated && open == field.number))
            || (desc.oneof.is_some() && oneof_member != 0 && oneof_member != field.number)
        {
            return Err(Stop::Reorder);
        }
        if desc.oneof.is_some() {
            oneof_member = field.number;
        }
        if desc.repeated {
            if open != field.number {
                if open != 0 {
                    out.push(b']');
                }
                write_key(out, desc, &mut first);
                out.push(b'[');
                open = field.number;
                first_item = true;
            }
            write_items(msg, desc, &field, out, &mut first_item, depth, checked)
                .map_err(|s| s.locate(data, desc, &field))?;
        } else {
            if open != 0 {
                out.push(b']');
                open = 0;
            }
            if !desc.presence && is_default(desc, &field) {
                continue;
            }
            write_key(out, desc, &mut first);
            write_value(msg, desc, &field, out, depth, checked).map_err(|s| s.at(desc, None))?;
        }
    }
    if open != 0 {
        out.push(b']');
    }
    Ok(())
}

/// Protobuf semantics for unusual input: repeated occurrences collected into one array, the
/// last value of a singular scalar wins, occurrences of a singular message merge, and only
/// the oneof member set last counts (from its first occurrence after any other member).
fn write_fields_merged(msg: &'static Msg, parts: &[&[u8]], out: &mut Vec<u8>, depth: usize) -> Walk {
    // Every field with its position (part, offset) and the part it is in; the first pass has
    // checked the structure.
    let fields = || {
        parts.iter().enumerate().flat_map(|(i, &data)| {
            Fields::new(data)
                .map_while(|f| f.ok())
                .map(move |f| ((i, schema::offset_in(data, f.raw)), data, f))
        })
    };
    let mut winner = 0u32;
    let mut since = (0, 0);
    for (at, _, field) in fields() {
        if msg.field(field.number).is_some_and(|d| d.oneof.is_some()) && field.number != winner {
            winner = field.number;
            since = at;
        }
    }
    let mut first = true;
    for desc in msg.fields {
        let from = match desc.oneof {
            Some(_) if desc.number != winner => continue,
            Some(_) => since,
            None => (0, 0),
        };
        let mut occurrences = fields()
            .filter(|(at, _, f)| f.number == desc.number && *at >= from)
            .peekable();
        if occurrences.peek().is_none() {
            continue;
        }
        if desc.repeated {
            write_key(out, desc, &mut first);
            out.push(b'[');
            let mut first_item = true;
            for (_, data, field) in occurrences {
                write_items(msg, desc, &field, out, &mut first_item, depth, true)
                    .map_err(|s| s.locate(data, desc, &field))?;
            }
            out.push(b']');
        } else if let Kind::Message(child) = desc.kind {
            let merged: Vec<&[u8]> = occurrences.map(|(_, _, f)| f.data).collect();
            write_key(out, desc, &mut first);
            write_message(child, &merged, out, depth + 1, true).map_err(|s| s.at(desc, None))?;
        } else if let Some((_, _, field)) = occurrences.last() {
            if !desc.presence && is_default(desc, &field) {
                continue;
            }
            write_key(out, desc, &mut first);
            write_value(msg, desc, &field, out, depth, true).map_err(|s| s.at(desc, None))?;
        }
    }
    Ok(())
}

#[inline]
fn write_key(out: &mut Vec<u8>, desc: &Field, first: &mut bool) {
    let key = desc.json.as_bytes();
    out.reserve(key.len() + 4);
    if !*first {
        out.push(b',');
    }
    *first = false;
    out.push(b'"');
    out.extend_from_slice(key);
    out.extend_from_slice(b"\":");
}

/// An implicit-presence field holding its default, which proto3 JSON leaves out.
#[inline]
fn is_default(desc: &Field, field: &wire::Field<'_>) -> bool {
    match desc.kind {
        Kind::String | Kind::Bytes | Kind::Hex | Kind::Message(_) => field.data.is_empty(),
        // 32-bit kinds read only the low 32 bits of the varint, as protobuf parsers do.
        Kind::Int32 | Kind::Uint32 | Kind::Sint32 | Kind::Fixed32 | Kind::Enum(_) => field.int as u32 == 0,
        // Double: only +0.0 is the default; -0.0 is written.
        _ => field.int == 0,
    }
}

/// Appends the items of one occurrence of a repeated field (one value, or a packed run).
fn write_items(
    msg: &'static Msg,
    desc: &'static Field,
    field: &wire::Field<'_>,
    out: &mut Vec<u8>,
    first_item: &mut bool,
    depth: usize,
    checked: bool,
) -> Walk {
    let mut sep = |out: &mut Vec<u8>| {
        if !*first_item {
            out.push(b',');
        }
        *first_item = false;
    };
    if !(desc.packed && field.wire_type == wire::LEN) {
        sep(out);
        return write_value(msg, desc, field, out, depth, checked);
    }
    let data = field.data;
    match desc.kind.wire_type() {
        wire::I64 => {
            for chunk in data.chunks_exact(8) {
                sep(out);
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(chunk);
                write_scalar(desc.kind, u64::from_le_bytes(bytes), out);
            }
        }
        wire::I32 => {
            for chunk in data.chunks_exact(4) {
                sep(out);
                let mut bytes = [0u8; 4];
                bytes.copy_from_slice(chunk);
                write_scalar(desc.kind, u64::from(u32::from_le_bytes(bytes)), out);
            }
        }
        _ => {
            let mut pos = 0;
            while pos < data.len() {
                let value = wire::read_varint(data, &mut pos).map_err(|_| {
                    Stop::from(Trail::new(format!(
                        "invalid protobuf: {} holds a truncated or overlong packed varint",
                        schema::describe(msg, desc)
                    )))
                })?;
                sep(out);
                write_scalar(desc.kind, value, out);
            }
        }
    }
    Ok(())
}

/// Writes one value whose wire type `check_wire` has accepted.
fn write_value(
    msg: &'static Msg,
    desc: &'static Field,
    field: &wire::Field<'_>,
    out: &mut Vec<u8>,
    depth: usize,
    checked: bool,
) -> Walk {
    match desc.kind {
        Kind::Message(child) => write_message(child, &[field.data], out, depth + 1, checked),
        Kind::String => write_utf8(out, field.data).map_err(|valid_up_to| {
            Trail::new(format!(
                "invalid protobuf: {} is not valid UTF-8 (byte {valid_up_to})",
                schema::describe(msg, desc),
            ))
            .into()
        }),
        Kind::Bytes => write_base64(out, field.data).map_err(Stop::from),
        Kind::Hex => {
            write_hex(out, field.data);
            Ok(())
        }
        _ => {
            write_scalar(desc.kind, field.int, out);
            Ok(())
        }
    }
}

/// Writes a scalar from its wire value (varint, or the bits of a fixed-width value).
#[inline]
fn write_scalar(kind: Kind, value: u64, out: &mut Vec<u8>) {
    match kind {
        Kind::Bool => out.extend_from_slice(if value != 0 { b"true" } else { b"false" }),
        Kind::Int32 | Kind::Enum(_) => write_i64(out, i64::from(value as u32 as i32)),
        Kind::Uint32 | Kind::Fixed32 => write_u64(out, u64::from(value as u32)),
        Kind::Sint32 => {
            let n = value as u32;
            write_i64(out, i64::from((n >> 1) as i32 ^ -((n & 1) as i32)));
        }
        // 64-bit integers are strings in proto3 JSON (JavaScript numbers lose precision).
        Kind::Int64 | Kind::Sfixed64 => {
            out.push(b'"');
            write_i64(out, value as i64);
            out.push(b'"');
        }
        Kind::Uint64 | Kind::Fixed64 => {
            out.push(b'"');
            write_u64(out, value);
            out.push(b'"');
        }
        Kind::Double => write_f64(out, f64::from_bits(value)),
        // Length-delimited kinds never reach here.
        Kind::String | Kind::Bytes | Kind::Hex | Kind::Message(_) => out.extend_from_slice(b"null"),
    }
}

/// "00" to "99": two digits per division (a nanosecond timestamp is 19 digits).
const DECIMAL_PAIRS: [[u8; 2]; 100] = {
    let mut table = [[0u8; 2]; 100];
    let mut i = 0;
    while i < 100 {
        table[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    table
};

#[inline]
fn write_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    while value >= 100 {
        at -= 2;
        buf[at..at + 2].copy_from_slice(&DECIMAL_PAIRS[(value % 100) as usize]);
        value /= 100;
    }
    if value >= 10 {
        at -= 2;
        buf[at..at + 2].copy_from_slice(&DECIMAL_PAIRS[value as usize]);
    } else {
        at -= 1;
        buf[at] = b'0' + value as u8;
    }
    out.extend_from_slice(&buf[at..]);
}

#[inline]
fn write_i64(out: &mut Vec<u8>, value: i64) {
    if value < 0 {
        out.push(b'-');
    }
    write_u64(out, value.unsigned_abs());
}

/// Shortest text that parses back to the same double; exponent form outside [1e-6, 1e21), as
/// JavaScript and Go write numbers.
fn write_f64(out: &mut Vec<u8>, value: f64) {
    if value.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if value.is_infinite() {
        out.extend_from_slice(if value > 0.0 { b"\"Infinity\"" } else { b"\"-Infinity\"" });
    } else if value == 0.0 {
        out.extend_from_slice(if value.is_sign_negative() { b"-0" } else { b"0" });
    } else if value.fract() == 0.0 && value.abs() < 9_007_199_254_740_992.0 {
        // Whole numbers below 2^53 (counts, gauges of integers) are exact as integers.
        write_i64(out, value as i64);
    } else if (1e-6..1e21).contains(&value.abs()) {
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{value}");
    } else {
        let _ = write!(out, "{value:e}");
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Each byte's two lowercase hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    table
};

fn write_hex(out: &mut Vec<u8>, data: &[u8]) {
    // Sized once, quotes included; the digits then fill the space between them.
    let start = out.len();
    out.resize(start + data.len() * 2 + 2, b'"');
    let digits = &mut out[start + 1..start + 1 + data.len() * 2];
    for (pair, &b) in digits.chunks_exact_mut(2).zip(data) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(b)]);
    }
}

fn write_base64(out: &mut Vec<u8>, data: &[u8]) -> std::result::Result<(), Trail> {
    let engine = &base64::engine::general_purpose::STANDARD;
    let Some(len) = base64::encoded_len(data.len(), true) else {
        return Err(Trail::new("bytes field too large to encode"));
    };
    out.push(b'"');
    let start = out.len();
    out.resize(start + len, 0);
    let written = engine
        .encode_slice(data, &mut out[start..])
        .map_err(|e| Trail::new(format!("base64: {e}")))?;
    out.truncate(start + written);
    out.push(b'"');
    Ok(())
}

/// What each byte needs when written inside a JSON string: 0 = as is, `u` = \u00XX, else the
/// letter after the backslash.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = b'u';
        i += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table[0x7f] = b'u';
    table
};

/// Whether any of the 8 bytes of `word` needs escaping: below 0x20, '"', '\\' or DEL. Exact:
/// true only when one does (the borrow of the zero-byte test cannot start without one).
#[inline]
fn word_needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    control
        | zero_byte(word ^ (ONES * u64::from(b'"')))
        | zero_byte(word ^ (ONES * u64::from(b'\\')))
        | zero_byte(word ^ (ONES * 0x7f))
        != 0
}

/// Writes `s` as a JSON string, escaping only what JSON requires (plus DEL), if it is valid
/// UTF-8; else `Err(valid_up_to)`. One scan for the usual ASCII string: the first byte above
/// 0x7f hands the rest to the UTF-8 check once, and the scan goes on looking for escapes only.
fn write_utf8(out: &mut Vec<u8>, s: &[u8]) -> std::result::Result<(), usize> {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut start = 0; // the first byte not yet copied
    let mut at = 0;
    let mut high = HIGH; // bytes above 0x7f stop the scan until the rest is known to be UTF-8
    loop {
        while let Some(chunk) = s.get(at..at + 8) {
            let word = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
            if word & high != 0 || word_needs_escape(word) {
                break;
            }
            at += 8;
        }
        while let Some(&b) = s.get(at) {
            if ESCAPE[usize::from(b)] != 0 || (b > 0x7f && high != 0) {
                break;
            }
            at += 1;
        }
        let Some(&b) = s.get(at) else { break };
        if b > 0x7f {
            std::str::from_utf8(&s[at..]).map_err(|e| at + e.valid_up_to())?;
            high = 0;
            continue;
        }
        out.extend_from_slice(&s[start..at]);
        let escape = ESCAPE[usize::from(b)];
        if escape == b'u' {
            out.extend_from_slice(b"\\u00");
            out.extend_from_slice(&HEX_PAIRS[usize::from(b)]);
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
        at += 1;
        start = at;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
    Ok(())
}

/// Writes valid UTF-8 as a JSON string.
#[cfg(test)]
fn write_str(out: &mut Vec<u8>, s: &[u8]) {
    write_utf8(out, s).expect("valid UTF-8");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{put_bytes, put_message, put_tag, put_uint};

    fn json(signal: Signal, body: &[u8]) -> String {
        String::from_utf8(protobuf_to_json(signal, body).unwrap()).unwrap()
    }

    fn fixed64(out: &mut Vec<u8>, number: u32, value: u64) {
        put_tag(out, number, wire::I64);
        out.extend_from_slice(&value.to_le_bytes());
    }

    #[test]
    fn empty_request_is_an_empty_object() {
        for s in Signal::ALL {
            assert_eq!(json(s, b""), "{}");
        }
    }

    #[test]
    fn span_fields_in_otlp_json_form() {
        let mut body = Vec::new();
        put_message(&mut body, 1, |rs| {
            put_message(rs, 1, |r| {
                put_message(r, 1, |kv| {
                    put_bytes(kv, 1, b"service.name");
                    put_message(kv, 2, |v| put_bytes(v, 1, b"api"));
                })
            });
            put_message(rs, 2, |ss| {
                put_message(ss, 2, |s| {
                    put_bytes(
                        s,
                        1,
                        &[
                            0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f, 0xc6,
                            0x0c,
                        ],
                    );
                    put_bytes(s, 2, &[0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74]);
                    put_bytes(s, 5, b"I'm a server span");
                    put_uint(s, 6, 2);
                    fixed64(s, 7, 1544712660000000000);
                    fixed64(s, 8, 1544712661000000000);
                    put_message(s, 15, |st| put_uint(st, 3, 2));
                    put_tag(s, 16, wire::I32);
                    s.extend_from_slice(&257u32.to_le_bytes());
                })
            });
            put_bytes(rs, 3, b"https://opentelemetry.io/schemas/1.4.0");
        });
        assert_eq!(
            json(Signal::Traces, &body),
            r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"api"}}]},"#
                .to_owned()
                + r#""scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","#
                + r#""name":"I'm a server span","kind":2,"startTimeUnixNano":"1544712660000000000","#
                + r#""endTimeUnixNano":"1544712661000000000","status":{"code":2},"flags":257}]}],"#
                + r#""schemaUrl":"https://opentelemetry.io/schemas/1.4.0"}]}"#
        );
    }

    #[test]
    fn scalars_and_defaults() {
        let mut body = Vec::new();
        put_message(&mut body, 1, |rl| {
            put_message(rl, 2, |sl| {
                put_message(sl, 2, |lr| {
                    fixed64(lr, 1, 0); // default, omitted
                    put_uint(lr, 2, 0); // default, omitted
                    put_bytes(lr, 3, b""); // default, omitted
                    put_message(lr, 5, |v| put_uint(v, 3, (-5i64) as u64)); // oneof: written
                    put_bytes(lr, 9, &[]); // default, omitted
                });
                put_message(sl, 2, |lr| put_message(lr, 5, |v| put_uint(v, 2, 0)));
                put_message(sl, 2, |lr| put_message(lr, 5, |v| put_bytes(v, 7, &[0xfb, 0xff])));
                put_message(sl, 2, |lr| put_message(lr, 5, |v| put_bytes(v, 1, b"")));
                put_message(sl, 2, |lr| put_message(lr, 5, |_| {}));
            })
        });
        assert_eq!(
            json(Signal::Logs, &body),
            r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"intValue":"-5"}},{"body":{"boolValue":false}},"#
                .to_owned()
                + r#"{"body":{"bytesValue":"+/8="}},{"body":{"stringValue":""}},{"body":{}}]}]}]}"#
        );
    }

    #[test]
    fn doubles() {
        let cases: [(f64, &str); 18] = [
            (5.0, "5"),
            (-123.0, "-123"),
            (9_007_199_254_740_991.0, "9007199254740991"),
            (9_007_199_254_740_992.0, "9007199254740992"),
            (1e15, "1000000000000000"),
            (-2.5, "-2.5"),
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0, "1"),
            (1.5, "1.5"),
            (0.1, "0.1"),
            (1e20, "100000000000000000000"),
            (1e21, "1e21"),
            (1.25e-7, "1.25e-7"),
            (f64::MAX, "1.7976931348623157e308"),
            (f64::NAN, "\"NaN\""),
            (f64::INFINITY, "\"Infinity\""),
            (f64::NEG_INFINITY, "\"-Infinity\""),
        ];
        for (value, text) in cases {
            let mut out = Vec::new();
            write_f64(&mut out, value);
            assert_eq!(String::from_utf8(out).unwrap(), text);
        }
    }

    #[test]
    fn integers() {
        let mut out = Vec::new();
        write_scalar(Kind::Sint32, 3, &mut out); // zigzag 3 = -2
        out.push(b' ');
        write_scalar(Kind::Int32, (-7i64) as u64, &mut out);
        out.push(b' ');
        write_scalar(Kind::Uint64, u64::MAX, &mut out);
        out.push(b' ');
        write_scalar(Kind::Sfixed64, i64::MIN as u64, &mut out);
        out.push(b' ');
        write_scalar(Kind::Fixed32, u64::from(u32::MAX), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"-2 -7 "18446744073709551615" "-9223372036854775808" 4294967295"#
        );
    }

    #[test]
    fn string_escapes() {
        let mut out = Vec::new();
        write_str(&mut out, "a\"b\\c\n\t\u{1}\u{7f}é😀\u{2028}".as_bytes());
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "\"a\\\"b\\\\c\\n\\t\\u0001\\u007fé😀\u{2028}\""
        );
    }

    #[test]
    fn word_scan_finds_every_byte_that_needs_escaping() {
        // Each byte value at each position of a word of otherwise clean (and non-ASCII) bytes.
        for filler in [b'a', 0xc3, 0xff, 0x20, 0x21] {
            for b in 0..=255u8 {
                for at in 0..8 {
                    let mut word = [filler; 8];
                    word[at] = b;
                    let expected = ESCAPE[usize::from(b)] != 0;
                    assert_eq!(word_needs_escape(u64::from_le_bytes(word)), expected, "{b:#x} at {at}");
                }
            }
        }
        // Escapes at every offset of strings longer than a word, and none.
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 40] {
            let clean = "é".repeat(len / 2) + &"x".repeat(len % 2);
            let mut out = Vec::new();
            write_str(&mut out, clean.as_bytes());
            assert_eq!(out, format!("\"{clean}\"").into_bytes());
            for at in 0..len {
                let mut s = vec![b'y'; len];
                s[at] = b'\n';
                let mut out = Vec::new();
                write_str(&mut out, &s);
                let expected = format!("\"{}\\n{}\"", "y".repeat(at), "y".repeat(len - at - 1));
                assert_eq!(String::from_utf8(out).unwrap(), expected);
            }
        }
    }

    #[test]
    fn utf8_checked_in_the_escape_scan() {
        let cases: [(&[u8], std::result::Result<&str, usize>); 7] = [
            (
                b"plain ascii, longer than a word",
                Ok("\"plain ascii, longer than a word\""),
            ),
            ("é\n".as_bytes(), Ok("\"é\\n\"")),
            (
                "abcdefgh\"ijklmnoé😀\u{1}".as_bytes(),
                Ok("\"abcdefgh\\\"ijklmnoé😀\\u0001\""),
            ),
            (b"\xff", Err(0)),
            (b"abc\xe2\x82", Err(3)),
            (b"\"\n\xc3\xa9\xc3", Err(4)),
            (b"0123456789\xc3\xa9xyz\xed\xa0\x80", Err(15)), // a surrogate
        ];
        for (input, expected) in cases {
            let mut out = Vec::new();
            let got = write_utf8(&mut out, input).map(|()| String::from_utf8(out).unwrap());
            assert_eq!(got, expected.map(str::to_owned), "{input:?}");
        }
    }

    #[test]
    fn malformed_input_errors_as_the_field_reader_words_them() {
        // Every truncation and a flipped byte at every offset of a valid request: the inlined
        // reader and `Fields` agree on what is malformed (no "readers disagree").
        let mut body = Vec::new();
        put_message(&mut body, 1, |rs| {
            put_message(rs, 2, |ss| {
                put_message(ss, 2, |s| {
                    put_bytes(s, 1, &[7; 16]);
                    put_bytes(s, 5, "naïve".as_bytes());
                    fixed64(s, 7, 1 << 60);
                    put_uint(s, 6, 300);
                    put_tag(s, 16, wire::I32);
                    s.extend_from_slice(&1u32.to_le_bytes());
                })
            })
        });
        let mut inputs: Vec<Vec<u8>> = (0..body.len()).map(|n| body[..n].to_vec()).collect();
        for at in 0..body.len() {
            for flip in [0x80, 0x07, 0xff] {
                let mut b = body.clone();
                b[at] ^= flip;
                inputs.push(b);
            }
        }
        for input in inputs {
            if let Err(e) = protobuf_to_json(Signal::Traces, &input) {
                assert!(!e.to_string().contains("disagree"), "{e}");
            }
        }
    }

    #[test]
    fn digits_and_hex() {
        for value in [
            0,
            9,
            10,
            99,
            100,
            101,
            999,
            1000,
            12345,
            u64::from(u32::MAX),
            u64::MAX - 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            write_u64(&mut out, value);
            assert_eq!(String::from_utf8(out).unwrap(), value.to_string());
        }
        for n in (0..12).map(|k| 10u64.pow(k)) {
            for value in [n - 1, n, n + 1] {
                let mut out = Vec::new();
                write_u64(&mut out, value);
                assert_eq!(String::from_utf8(out).unwrap(), value.to_string());
            }
        }
        let mut out = b"x".to_vec();
        write_hex(&mut out, &[0x00, 0x0f, 0xf0, 0xff, 0x5a]);
        write_hex(&mut out, &[]);
        assert_eq!(out, b"x\"000ff0ff5a\"\"\"");
    }

    #[test]
    fn merges_non_canonical_input() {
        // Span with a repeated field split around another field, a singular field given twice
        // (last wins) and a status message given twice (merged).
        let mut body = Vec::new();
        put_message(&mut body, 1, |rs| {
            put_message(rs, 2, |ss| {
                put_message(ss, 2, |s| {
                    put_message(s, 9, |kv| put_bytes(kv, 1, b"a"));
                    put_bytes(s, 5, b"first");
                    put_message(s, 15, |st| put_bytes(st, 2, b"msg"));
                    put_message(s, 9, |kv| put_bytes(kv, 1, b"b"));
                    put_bytes(s, 5, b"second");
                    put_message(s, 15, |st| put_uint(st, 3, 1));
                })
            })
        });
        assert_eq!(
            json(Signal::Traces, &body),
            r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"second","attributes":[{"key":"a"},{"key":"b"}],"#
                .to_owned()
                + r#""status":{"message":"msg","code":1}}]}]}]}"#
        );
        // Two oneof members: the later one wins.
        let mut body = Vec::new();
        put_message(&mut body, 1, |rl| {
            put_message(rl, 2, |sl| {
                put_message(sl, 2, |lr| {
                    put_message(lr, 5, |v| {
                        put_bytes(v, 1, b"text");
                        put_uint(v, 3, 9);
                    })
                })
            })
        });
        assert_eq!(
            json(Signal::Logs, &body),
            r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"intValue":"9"}}]}]}]}"#
        );
    }

    #[test]
    fn disorder_deep_in_canonical_input() {
        // The kvlist_value of a log body given twice (protobuf merges them), five levels down
        // in an otherwise canonical request: the one-pass write stops and the checked one runs.
        let mut body = Vec::new();
        put_message(&mut body, 1, |rl| {
            put_message(rl, 2, |sl| {
                put_message(sl, 2, |lr| {
                    put_bytes(lr, 3, b"INFO");
                    put_message(lr, 5, |v| {
                        put_message(v, 6, |kvl| put_message(kvl, 1, |kv| put_bytes(kv, 1, b"a")));
                        put_message(v, 6, |kvl| put_message(kvl, 1, |kv| put_bytes(kv, 1, b"b")));
                    });
                    put_bytes(lr, 9, &[0xab; 16]);
                });
                put_message(sl, 2, |lr| put_bytes(lr, 3, b"second"));
            })
        });
        assert_eq!(
            json(Signal::Logs, &body),
            r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"severityText":"INFO","body":{"kvlistValue":{"values":[{"key":"a"},{"key":"b"}]}},"#
                .to_owned()
                + r#""traceId":"abababababababababababababababab"},{"severityText":"second"}]}]}]}"#
        );
        // Errors found on the checked pass still name the field.
        let mut body = Vec::new();
        put_message(&mut body, 1, |rl| {
            put_message(rl, 2, |sl| {
                put_message(sl, 2, |lr| {
                    put_message(lr, 5, |v| put_message(v, 6, |_| {}));
                    put_message(lr, 5, |v| {
                        put_message(v, 6, |kvl| put_message(kvl, 1, |kv| put_bytes(kv, 1, &[0xff])))
                    });
                })
            })
        });
        let e = protobuf_to_json(Signal::Logs, &body).unwrap_err();
        assert!(matches!(e, crate::error::CoreError::Decode(_)));
        assert_eq!(
            e.to_string(),
            "invalid protobuf: KeyValue.key (field 1) is not valid UTF-8 (byte 0) \
             (at resourceLogs[0].scopeLogs[0].logRecords[0].body.kvlistValue.values[0].key)"
        );
    }

    #[test]
    fn packed_and_unpacked_arrays() {
        let mut body = Vec::new();
        put_message(&mut body, 1, |rm| {
            put_message(rm, 2, |sm| {
                put_message(sm, 2, |m| {
                    put_bytes(m, 1, b"h");
                    put_message(m, 9, |h| {
                        put_message(h, 1, |p| {
                            // bucket_counts: one packed run then one unpacked value.
                            put_message(p, 6, |b| {
                                b.extend_from_slice(&1u64.to_le_bytes());
                                b.extend_from_slice(&2u64.to_le_bytes());
                            });
                            fixed64(p, 6, 3);
                            put_message(p, 7, |b| b.extend_from_slice(&0.5f64.to_le_bytes()));
                        })
                    })
                })
            })
        });
        assert_eq!(
            json(Signal::Metrics, &body),
            r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"name":"h","histogram":{"dataPoints":[{"bucketCounts":["1","2","3"],"explicitBounds":[0.5]}]}}]}]}]}"#
        );
    }

    #[test]
    fn errors_name_the_field() {
        let mut body = Vec::new();
        put_message(&mut body, 1, |rs| {
            put_message(rs, 2, |ss| put_message(ss, 2, |s| put_bytes(s, 3, &[0xe2, 0x82])))
        });
        let e = protobuf_to_json(Signal::Traces, &body).unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid protobuf: Span.trace_state (field 3) is not valid UTF-8 (byte 0) \
             (at resourceSpans[0].scopeSpans[0].spans[0].traceState)"
        );
        let mut body = Vec::new();
        put_message(&mut body, 1, |rs| {
            put_message(rs, 2, |ss| put_message(ss, 2, |s| put_uint(s, 1, 5)))
        });
        let e = protobuf_to_json(Signal::Traces, &body).unwrap_err().to_string();
        assert!(
            e.contains("Span.trace_id (field 1) has wire type 0 (varint), expected 2"),
            "{e}"
        );
        let e = protobuf_to_json(Signal::Traces, &[0x0a, 0x05, 0x12])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("truncated protobuf: ExportTraceServiceRequest.resource_spans (field 1)"),
            "{e}"
        );
    }
}
