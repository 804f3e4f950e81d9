//! OTLP/JSON → protobuf `Export*ServiceRequest`, in one pass: a small JSON reader driven by the
//! schema writes each field straight into the output with `wire::put_message`, never building a
//! document tree.
//!
//! The OTLP/JSON mapping (opentelemetry-proto docs/specification.md) on top of proto3 JSON:
//! trace and span ids are hex; 64-bit integers come as strings or numbers; enums as integers
//! (value names accepted too); lowerCamelCase keys (.proto names accepted too); unknown keys
//! ignored; `null` means absent; doubles may be "NaN", "Infinity", "-Infinity". A key given
//! twice, or two members of one oneof, is an error, as in protobuf's own JSON parsers.
//!
//! Fields are written in the order their keys appear, so JSON written by `json_encode` from
//! canonical protobuf decodes back to the same bytes. Numbers are parsed from their text (never
//! through f64 for integers), so 64-bit values and doubles round-trip exactly.

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine as _};

use crate::error::{quote, shorten_bytes, CoreError, Result};
use crate::schema::{self, Field, Kind, Msg, Trail, MAX_DEPTH};
use crate::signal::Signal;
use crate::wire;

type Parse<T = ()> = std::result::Result<T, Trail>;

/// How deep an ignored (unknown) value may nest.
const MAX_SKIP_DEPTH: usize = 128;

/// Converts an OTLP/JSON `Export*ServiceRequest` of `signal` to protobuf.
pub fn json_to_protobuf(signal: Signal, body: &[u8]) -> Result<Vec<u8>> {
    json_to_message(schema::request(signal), body)
}

/// Converts the JSON form of any described message to protobuf.
pub fn json_to_message(msg: &'static Msg, body: &[u8]) -> Result<Vec<u8>> {
    // RFC 8259 lets a parser ignore a byte order mark; some Windows clients send one.
    let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    if body.iter().all(|&b| is_space(b)) {
        return Err(CoreError::decode("empty JSON body"));
    }
    let mut parser = Parser {
        s: body,
        pos: 0,
        scratch: Vec::new(),
    };
    // Protobuf is typically a third to a half of its OTLP/JSON.
    let mut out = Vec::with_capacity(body.len() / 2);
    parser.skip_space();
    parser.message(msg, &mut out, 0).map_err(|t| t.into_json_error(msg))?;
    parser.skip_space();
    if parser.pos < body.len() {
        return Err(parser
            .syntax("unexpected data after the top-level object")
            .into_json_error(msg));
    }
    Ok(out)
}

#[inline]
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// A string value: a slice of the input when it has no escapes, else unescaped into `scratch`.
#[derive(Clone, Copy)]
enum Text {
    Input(usize, usize),
    Scratch,
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    scratch: Vec<u8>,
}

impl<'a> Parser<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    #[inline]
    fn skip_space(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
    }

    fn syntax(&self, what: &str) -> Trail {
        match self.peek() {
            None => Trail::new(format!("invalid JSON: unexpected end of input ({what})")),
            Some(b) => {
                // The character there, or the byte when it does not start valid UTF-8.
                let shown = (1..=4)
                    .find_map(|n| std::str::from_utf8(self.s.get(self.pos..self.pos + n)?).ok())
                    .and_then(|c| c.chars().next())
                    .map_or_else(|| format!("byte 0x{b:02x}"), |c| format!("{c:?}"));
                Trail::new(format!("invalid JSON at byte {}: {what}, found {shown}", self.pos))
            }
        }
    }

    /// What the next value is, for "expected X, got Y" messages.
    fn found(&self) -> &'static str {
        match self.peek() {
            Some(b'{') => "an object",
            Some(b'[') => "an array",
            Some(b'"') => "a string",
            Some(b't' | b'f') => "a boolean",
            Some(b'n') => "null",
            Some(b'-' | b'0'..=b'9') => "a number",
            None => "the end of input",
            Some(_) => "an invalid token",
        }
    }

    fn expected(&self, what: &str) -> Trail {
        match self.found() {
            "an invalid token" | "the end of input" => self.syntax(&format!("expected {what}")),
            got => Trail::new(format!("expected {what}, got {got}")),
        }
    }

    #[inline]
    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn literal(&mut self, word: &[u8]) -> Parse {
        if self.s.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(())
        } else {
            Err(self.syntax("invalid literal"))
        }
    }

    /// After a value inside `{...}` or `[...]`: true for `,` (another follows), false for `close`.
    #[inline]
    fn next_member(&mut self, close: u8) -> Parse<bool> {
        self.skip_space();
        if self.eat(b',') {
            self.skip_space();
            Ok(true)
        } else if self.eat(close) {
            Ok(false)
        } else {
            Err(self.syntax(if close == b'}' {
                "expected ',' or '}'"
            } else {
                "expected ',' or ']'"
            }))
        }
    }

    /// Opens an object or array: true when it has members.
    #[inline]
    fn open(&mut self, open: u8, close: u8, what: &str) -> Parse<bool> {
        if !self.eat(open) {
            return Err(self.expected(what));
        }
        self.skip_space();
        Ok(!self.eat(close))
    }

    fn text(&self, text: Text) -> &[u8] {
        match text {
            Text::Input(start, end) => self.s.get(start..end).unwrap_or_default(),
            Text::Scratch => &self.scratch,
        }
    }

    /// Reads a string (at its opening quote).
    fn string(&mut self) -> Parse<Text> {
        if !self.eat(b'"') {
            return Err(self.expected("a string"));
        }
        let start = self.pos;
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    let text = Text::Input(start, self.pos - 1);
                    self.check_utf8(text, start)?;
                    return Ok(text);
                }
                Some(b'\\') => break,
                Some(0..=0x1f) => return Err(self.syntax("control character in string")),
                Some(_) => self.pos += 1,
                None => return Err(self.syntax("unterminated string")),
            }
        }
        self.scratch.clear();
        self.scratch
            .extend_from_slice(self.s.get(start..self.pos).unwrap_or_default());
        loop {
            match self.peek() {
                Some(b'"') => {
                    self.pos += 1;
                    // Escapes add only whole characters, so this finds exactly the input's bad bytes.
                    self.check_utf8(Text::Scratch, start)?;
                    return Ok(Text::Scratch);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.escape()?;
                }
                Some(0..=0x1f) => return Err(self.syntax("control character in string")),
                Some(b) => {
                    self.scratch.push(b);
                    self.pos += 1;
                }
                None => return Err(self.syntax("unterminated string")),
            }
        }
    }

    /// Strings are checked one by one (not the body up front) so the error can name the field.
    #[inline]
    fn check_utf8(&self, text: Text, start: usize) -> Parse {
        match std::str::from_utf8(self.text(text)) {
            Ok(_) => Ok(()),
            Err(_) => Err(Trail::new(format!(
                "invalid JSON: the string at byte {start} is not valid UTF-8"
            ))),
        }
    }

    /// Unescapes one escape (after its backslash) into `scratch`.
    fn escape(&mut self) -> Parse {
        let Some(b) = self.peek() else {
            return Err(self.syntax("unterminated string"));
        };
        let plain = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'/' => b'/',
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                self.pos += 1;
                let unit = self.hex4()?;
                let c = match unit {
                    0xd800..=0xdbff => {
                        // A high surrogate pairs with a following \uDC00-\uDFFF escape.
                        let rest = self.s.get(self.pos..self.pos + 2);
                        if rest == Some(b"\\u") {
                            let save = self.pos;
                            self.pos += 2;
                            let low = self.hex4()?;
                            if (0xdc00..=0xdfff).contains(&low) {
                                let code = 0x10000 + ((u32::from(unit) - 0xd800) << 10) + (u32::from(low) - 0xdc00);
                                char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER)
                            } else {
                                self.pos = save;
                                char::REPLACEMENT_CHARACTER
                            }
                        } else {
                            char::REPLACEMENT_CHARACTER
                        }
                    }
                    // A lone surrogate (JavaScript's JSON.stringify writes them) cannot be UTF-8.
                    0xdc00..=0xdfff => char::REPLACEMENT_CHARACTER,
                    _ => char::from_u32(u32::from(unit)).unwrap_or(char::REPLACEMENT_CHARACTER),
                };
                let mut buf = [0u8; 4];
                self.scratch.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                return Ok(());
            }
            _ => return Err(self.syntax("invalid escape in string")),
        };
        self.scratch.push(plain);
        self.pos += 1;
        Ok(())
    }

    fn hex4(&mut self) -> Parse<u16> {
        let mut value = 0u16;
        for _ in 0..4 {
            let digit = self.peek().and_then(|b| (b as char).to_digit(16));
            let Some(digit) = digit else {
                return Err(self.syntax("invalid \\u escape"));
            };
            value = (value << 4) | digit as u16;
            self.pos += 1;
        }
        Ok(value)
    }

    /// Reads a number token (at its first character), checking JSON's number grammar.
    fn number(&mut self) -> Parse<(usize, usize)> {
        let start = self.pos;
        while self
            .peek()
            .is_some_and(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'))
        {
            self.pos += 1;
        }
        let token = self.s.get(start..self.pos).unwrap_or_default();
        if Number::parse(token).is_none() {
            self.pos = start;
            return Err(self.syntax("invalid number"));
        }
        Ok((start, self.pos))
    }

    /// Skips any value, checking its syntax; used for unknown keys.
    fn skip_value(&mut self, depth: usize) -> Parse {
        if depth > MAX_SKIP_DEPTH {
            return Err(self.syntax(&format!("unknown value nested deeper than {MAX_SKIP_DEPTH} levels")));
        }
        match self.peek() {
            Some(b'{') => {
                if self.open(b'{', b'}', "an object")? {
                    loop {
                        self.string()?;
                        self.skip_space();
                        if !self.eat(b':') {
                            return Err(self.syntax("expected ':'"));
                        }
                        self.skip_space();
                        self.skip_value(depth + 1)?;
                        if !self.next_member(b'}')? {
                            break;
                        }
                    }
                }
                Ok(())
            }
            Some(b'[') => {
                if self.open(b'[', b']', "an array")? {
                    loop {
                        self.skip_value(depth + 1)?;
                        if !self.next_member(b']')? {
                            break;
                        }
                    }
                }
                Ok(())
            }
            Some(b'"') => self.string().map(|_| ()),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number().map(|_| ()),
            _ => Err(self.syntax("expected a value")),
        }
    }

    /// Reads one message object, writing its fields to `out` in key order.
    fn message(&mut self, msg: &'static Msg, out: &mut Vec<u8>, depth: usize) -> Parse {
        if depth > MAX_DEPTH {
            return Err(Trail::new(format!(
                "{} is nested deeper than {MAX_DEPTH} messages",
                msg.name
            )));
        }
        if !self.open(b'{', b'}', "an object")? {
            return Ok(());
        }
        let mut seen = 0u64;
        let mut oneof: Option<&'static Field> = None;
        loop {
            let key = self.string()?;
            let desc = msg.field_by_key(self.text(key));
            self.skip_space();
            if !self.eat(b':') {
                return Err(self.syntax("expected ':'"));
            }
            self.skip_space();
            match desc {
                None => self.skip_value(0)?,
                Some(desc) => {
                    let bit = 1u64 << desc.number;
                    if seen & bit != 0 {
                        return Err(Trail::new("field given more than once").at(desc, None));
                    }
                    seen |= bit;
                    if self.peek() == Some(b'n') {
                        self.literal(b"null").map_err(|t| t.at(desc, None))?;
                    } else {
                        if desc.oneof.is_some() {
                            if let Some(other) = oneof {
                                return Err(Trail::new(format!(
                                    "only one of {:?} and {:?} may be set (oneof {})",
                                    other.json,
                                    desc.json,
                                    desc.oneof.unwrap_or_default()
                                ))
                                .at(desc, None));
                            }
                            oneof = Some(desc);
                        }
                        self.field(desc, out, depth)?;
                    }
                }
            }
            if !self.next_member(b'}')? {
                return Ok(());
            }
        }
    }

    /// Reads a field's (non-null) value; errors carry the field in their path.
    fn field(&mut self, desc: &'static Field, out: &mut Vec<u8>, depth: usize) -> Parse {
        if !desc.repeated {
            return self.value(desc, out, depth, true).map_err(|t| t.at(desc, None));
        }
        if !self.open(b'[', b']', "an array").map_err(|t| t.at(desc, None))? {
            return Ok(());
        }
        let mut index = 0;
        if desc.packed {
            let mark = out.len();
            let mut result = Ok(());
            wire::put_message(out, desc.number, |out| {
                result = loop {
                    if let Err(t) = self.packed_item(desc, out) {
                        break Err(t.at(desc, Some(index)));
                    }
                    index += 1;
                    match self.next_member(b']') {
                        Ok(true) => {}
                        Ok(false) => break Ok(()),
                        Err(t) => break Err(t.at(desc, None)),
                    }
                }
            });
            if result.is_ok() && index == 0 {
                out.truncate(mark);
            }
            return result;
        }
        loop {
            if self.peek() == Some(b'n') {
                return Err(Trail::new("null is not allowed in a list").at(desc, Some(index)));
            }
            self.value(desc, out, depth, false)
                .map_err(|t| t.at(desc, Some(index)))?;
            index += 1;
            if !self.next_member(b']').map_err(|t| t.at(desc, None))? {
                return Ok(());
            }
        }
    }

    /// One element of a packed array: the value without a tag.
    fn packed_item(&mut self, desc: &'static Field, out: &mut Vec<u8>) -> Parse {
        let bits = self.scalar(desc.kind)?;
        put_scalar(out, desc.kind, bits);
        Ok(())
    }

    /// Reads one value and writes it as a tagged field. `singular` fields without explicit
    /// presence are left out when they hold the default, as proto3 serializers do.
    fn value(&mut self, desc: &'static Field, out: &mut Vec<u8>, depth: usize, singular: bool) -> Parse {
        let skip_default = singular && !desc.presence;
        match desc.kind {
            Kind::Message(child) => {
                let mut result = Ok(());
                wire::put_message(out, desc.number, |out| result = self.message(child, out, depth + 1));
                result
            }
            Kind::String => {
                let text = self.string()?;
                let bytes = self.text(text);
                if !(skip_default && bytes.is_empty()) {
                    wire::put_bytes(out, desc.number, bytes);
                }
                Ok(())
            }
            Kind::Bytes => {
                let text = self.string()?;
                let bytes = self.text(text);
                if skip_default && bytes.is_empty() {
                    return Ok(());
                }
                let engine = if bytes.iter().any(|&b| b == b'-' || b == b'_') {
                    &URL_SAFE
                } else {
                    &STANDARD
                };
                let mut result = Ok(());
                wire::put_message(out, desc.number, |out| {
                    result = engine
                        .decode_vec(bytes, out)
                        .map_err(|e| Trail::new(format!("invalid base64: {e}")));
                });
                result
            }
            Kind::Hex => {
                let text = self.string()?;
                let hex = self.text(text);
                if skip_default && hex.is_empty() {
                    return Ok(());
                }
                put_hex(out, desc.number, hex)
            }
            kind => {
                let bits = self.scalar(kind)?;
                if !(skip_default && bits == 0) {
                    wire::put_tag(out, desc.number, kind.wire_type());
                    put_scalar(out, kind, bits);
                }
                Ok(())
            }
        }
    }

    /// Reads a scalar and returns its wire value: the varint to write, or a fixed-width
    /// value's bits. Zero is exactly the proto3 default (a -0.0 double is not).
    fn scalar(&mut self, kind: Kind) -> Parse<u64> {
        match kind {
            Kind::Bool => match self.peek() {
                Some(b't') => self.literal(b"true").map(|_| 1),
                Some(b'f') => self.literal(b"false").map(|_| 0),
                _ => Err(self.expected("a boolean")),
            },
            Kind::Double => self.double().map(f64::to_bits),
            Kind::Enum(e) => {
                if self.peek() == Some(b'"') {
                    let start = self.pos;
                    let text = self.string()?;
                    let name = std::str::from_utf8(self.text(text)).unwrap_or_default();
                    if let Some(v) = e.value(name) {
                        return Ok(i64::from(v) as u64);
                    }
                    // A number in a string ("2") is read as the number.
                    if !name
                        .as_bytes()
                        .first()
                        .is_some_and(|b| b.is_ascii_digit() || *b == b'-')
                    {
                        return Err(Trail::new(format!(
                            "unknown {} value {}",
                            e.name,
                            quote(self.text(text))
                        )));
                    }
                    self.pos = start;
                }
                Ok(self.integer(kind)? as i64 as u64)
            }
            Kind::Int32 | Kind::Int64 | Kind::Sfixed64 => Ok(self.integer(kind)? as i64 as u64),
            Kind::Uint32 | Kind::Fixed32 | Kind::Uint64 | Kind::Fixed64 => Ok(self.integer(kind)? as u64),
            Kind::Sint32 => {
                let v = self.integer(kind)? as i32;
                Ok(u64::from(((v << 1) ^ (v >> 31)) as u32))
            }
            Kind::String | Kind::Bytes | Kind::Hex | Kind::Message(_) => Err(Trail::new("not a scalar field")),
        }
    }

    /// An integer given as a JSON number or a string holding one ("123", "-5", "1e3"),
    /// within the range of `kind`.
    fn integer(&mut self, kind: Kind) -> Parse<i128> {
        let (type_name, min, max): (&str, i128, i128) = match kind {
            Kind::Enum(_) => ("an enum (int32)", i32::MIN.into(), i32::MAX.into()),
            Kind::Int32 => ("int32", i32::MIN.into(), i32::MAX.into()),
            Kind::Sint32 => ("sint32", i32::MIN.into(), i32::MAX.into()),
            Kind::Uint32 => ("uint32", 0, u32::MAX.into()),
            Kind::Fixed32 => ("fixed32", 0, u32::MAX.into()),
            Kind::Int64 => ("int64", i64::MIN.into(), i64::MAX.into()),
            Kind::Sfixed64 => ("sfixed64", i64::MIN.into(), i64::MAX.into()),
            Kind::Fixed64 => ("fixed64", 0, u64::MAX.into()),
            _ => ("uint64", 0, u64::MAX.into()),
        };
        let what = if matches!(kind, Kind::Enum(_)) {
            "an integer or enum value name"
        } else {
            "an integer"
        };
        let (text, quoted) = match self.peek() {
            Some(b'"') => {
                let text = self.string()?;
                (text, true)
            }
            Some(b'-' | b'0'..=b'9') => {
                let (start, end) = self.number()?;
                (Text::Input(start, end), false)
            }
            _ => return Err(self.expected(what)),
        };
        let token = self.text(text);
        let Some(number) = Number::parse(token) else {
            return Err(Trail::new(format!("expected {what}, got {}", quote(token))));
        };
        let shown = || if quoted { quote(token) } else { shorten_bytes(token) };
        match number.integer() {
            Some(v) if (min..=max).contains(&v) => Ok(v),
            Some(_) | None if number.is_integral() => {
                Err(Trail::new(format!("{} is out of range for {type_name}", shown())))
            }
            _ => Err(Trail::new(format!("expected {what}, got {}", shown()))),
        }
    }

    fn double(&mut self) -> Parse<f64> {
        let (text, quoted) = match self.peek() {
            Some(b'"') => (self.string()?, true),
            Some(b'-' | b'0'..=b'9') => {
                let (start, end) = self.number()?;
                (Text::Input(start, end), false)
            }
            _ => return Err(self.expected("a number")),
        };
        let token = self.text(text);
        if quoted {
            match token {
                b"NaN" => return Ok(f64::NAN),
                b"Infinity" => return Ok(f64::INFINITY),
                b"-Infinity" => return Ok(f64::NEG_INFINITY),
                _ => {}
            }
            if Number::parse(token).is_none() {
                return Err(Trail::new(format!("expected a number, got {}", quote(token))));
            }
        }
        // The grammar was checked, so this is a plain decimal (Rust rounds it correctly).
        let value = std::str::from_utf8(token).ok().and_then(|t| t.parse::<f64>().ok());
        match value {
            Some(v) if v.is_finite() => Ok(v),
            _ => Err(Trail::new(format!(
                "{} is out of range for a double",
                shorten_bytes(token)
            ))),
        }
    }
}

/// A JSON number split into its parts: `-? int (. frac)? (e exp)?`.
struct Number<'t> {
    negative: bool,
    int: &'t [u8],
    frac: &'t [u8],
    exp: i64,
}

impl<'t> Number<'t> {
    fn parse(token: &'t [u8]) -> Option<Self> {
        let (negative, rest) = match token.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, token),
        };
        let int_len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let (int, mut rest) = rest.split_at(int_len);
        // No leading zeros, at least one digit.
        if int.is_empty() || (int.len() > 1 && int.first() == Some(&b'0')) {
            return None;
        }
        let mut frac: &[u8] = &[];
        if let Some((b'.', after)) = rest.split_first() {
            let len = after.iter().take_while(|b| b.is_ascii_digit()).count();
            if len == 0 {
                return None;
            }
            (frac, rest) = after.split_at(len);
        }
        let mut exp = 0i64;
        if let Some((b'e' | b'E', after)) = rest.split_first() {
            let (sign, digits) = match after.split_first() {
                Some((b'-', d)) => (-1, d),
                Some((b'+', d)) => (1, d),
                _ => (1, after),
            };
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            // Saturate far above any digit count a body can hold (a mantissa of 10^6 digits with
            // e-1000001 is still 1), yet low enough that `exp` arithmetic cannot overflow.
            let magnitude = digits
                .iter()
                .fold(0i64, |acc, &d| (acc * 10 + i64::from(d - b'0')).min(1 << 59));
            exp = sign * magnitude;
            rest = &[];
        }
        rest.is_empty().then_some(Number {
            negative,
            int,
            frac,
            exp,
        })
    }

    /// Digits of the value and the power of ten they are scaled by.
    fn digits(&self) -> (impl Iterator<Item = u8> + 't, i64) {
        let (int, frac) = (self.int, self.frac);
        (int.iter().chain(frac).map(|d| d - b'0'), self.exp - frac.len() as i64)
    }

    /// Whether the value is a whole number.
    fn is_integral(&self) -> bool {
        let (digits, scale) = self.digits();
        // The last -scale digits are after the decimal point and must all be zero.
        scale >= 0 || digits.skip(self.whole_len(scale)).all(|d| d == 0)
    }

    /// How many leading digits are before the decimal point.
    fn whole_len(&self, scale: i64) -> usize {
        let total = self.int.len() + self.frac.len();
        if scale >= 0 {
            total
        } else {
            total.saturating_sub(usize::try_from(scale.unsigned_abs()).unwrap_or(usize::MAX))
        }
    }

    /// The exact value when it is a whole number within ±2^64.
    fn integer(&self) -> Option<i128> {
        if !self.is_integral() {
            return None;
        }
        let (digits, scale) = self.digits();
        let limit = i128::from(u64::MAX);
        let mut value: i128 = 0;
        for d in digits.take(self.whole_len(scale)) {
            value = value * 10 + i128::from(d);
            if value > limit {
                return None;
            }
        }
        if value != 0 {
            for _ in 0..scale.max(0) {
                value *= 10;
                if value > limit {
                    return None;
                }
            }
        }
        Some(if self.negative { -value } else { value })
    }
}

/// Writes a scalar's wire value without a tag.
#[inline]
fn put_scalar(out: &mut Vec<u8>, kind: Kind, bits: u64) {
    match kind.wire_type() {
        wire::I64 => out.extend_from_slice(&bits.to_le_bytes()),
        wire::I32 => out.extend_from_slice(&(bits as u32).to_le_bytes()),
        _ => wire::put_varint(out, bits),
    }
}

/// Writes a hex string as a bytes field, decoding straight into `out`.
fn put_hex(out: &mut Vec<u8>, number: u32, hex: &[u8]) -> Parse {
    if !hex.len().is_multiple_of(2) {
        return Err(Trail::new(format!("invalid hex: odd number of digits ({})", hex.len())));
    }
    wire::put_tag(out, number, wire::LEN);
    wire::put_varint(out, (hex.len() / 2) as u64);
    out.reserve(hex.len() / 2);
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        let &[a, b] = pair else { continue };
        let (Some(hi), Some(lo)) = (hex_digit(a), hex_digit(b)) else {
            let bad = if hex_digit(a).is_none() { 2 * i } else { 2 * i + 1 };
            let shown = std::str::from_utf8(hex)
                .ok()
                .and_then(|s| s.get(bad..))
                .and_then(|s| s.chars().next());
            return Err(Trail::new(format!(
                "invalid hex: {} at offset {bad} in {}",
                shown.map_or_else(|| "non-ASCII character".to_owned(), |c| format!("{c:?}")),
                quote(hex)
            )));
        };
        out.push(hi << 4 | lo);
    }
    Ok(())
}

#[inline]
fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

// proto3 JSON accepts standard and URL-safe base64, padded or not; be lenient about trailing
// bits as Go's decoder is.
const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(true);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json_encode::{message_to_json, protobuf_to_json};
    use crate::schema::testgen::{self, Rng};
    use crate::validate::validate;
    use crate::wire::{put_bytes, put_message, put_tag, put_uint, Fields};

    fn decode(signal: Signal, json: &str) -> Vec<u8> {
        json_to_protobuf(signal, json.as_bytes()).unwrap_or_else(|e| panic!("{e}\n{json}"))
    }

    fn decode_err(signal: Signal, json: &str) -> String {
        match json_to_protobuf(signal, json.as_bytes()) {
            Ok(pb) => panic!("decoded {pb:?} from {json}"),
            Err(e) => {
                assert!(matches!(e, CoreError::Decode(_)), "{e:?}");
                e.to_string()
            }
        }
    }

    /// The fields with `number` in `data`, in order.
    fn all(data: &[u8], number: u32) -> Vec<wire::Field<'_>> {
        Fields::new(data)
            .map(|f| f.unwrap())
            .filter(|f| f.number == number)
            .collect()
    }

    /// Follows a path of field numbers (first occurrence at each level) to a field.
    fn get<'a>(data: &'a [u8], path: &[u32]) -> wire::Field<'a> {
        let (&last, parents) = path.split_last().unwrap();
        let mut data = data;
        for &n in parents {
            data = all(data, n)
                .first()
                .unwrap_or_else(|| panic!("no field {n} on {path:?}"))
                .data;
        }
        *all(data, last)
            .first()
            .unwrap_or_else(|| panic!("no field {last} on {path:?}"))
    }

    fn fixed64(out: &mut Vec<u8>, number: u32, value: u64) {
        put_tag(out, number, wire::I64);
        out.extend_from_slice(&value.to_le_bytes());
    }

    fn fixed32(out: &mut Vec<u8>, number: u32, value: u32) {
        put_tag(out, number, wire::I32);
        out.extend_from_slice(&value.to_le_bytes());
    }

    fn kv(out: &mut Vec<u8>, number: u32, key: &str, value: impl FnOnce(&mut Vec<u8>)) {
        put_message(out, number, |kv| {
            put_bytes(kv, 1, key.as_bytes());
            put_message(kv, 2, value);
        });
    }

    use crate::test_support::nesting;

    fn round_trip(signal: Signal, pb: &[u8]) {
        validate(signal, pb).unwrap();
        let json = protobuf_to_json(signal, pb).unwrap();
        let text = String::from_utf8(json.clone()).expect("JSON is UTF-8");
        // An independent parser agrees it is JSON (within its own nesting limit).
        if nesting(&json) < 120 {
            serde_json::from_slice::<serde_json::Value>(&json).unwrap_or_else(|e| panic!("{e}: {text}"));
        }
        assert!(!text.contains('\n') && !text.ends_with(' '), "{text}");
        let back = json_to_protobuf(signal, &json).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(back, pb, "{text}");
    }

    // ---- round trips of hand-built canonical requests ----

    fn resource(r: &mut Vec<u8>) {
        kv(r, 1, "service.name", |v| put_bytes(v, 1, "checkout ✓".as_bytes()));
        kv(r, 1, "nested", |v| {
            put_message(v, 6, |kvlist| {
                kv(kvlist, 1, "list", |v| {
                    put_message(v, 5, |array| {
                        put_message(array, 1, |v| put_uint(v, 3, (-42i64) as u64));
                        put_message(array, 1, |v| put_uint(v, 2, 1));
                        put_message(array, 1, |v| {
                            put_tag(v, 4, wire::I64);
                            v.extend_from_slice(&f64::NAN.to_bits().to_le_bytes());
                        });
                        put_message(array, 1, |v| put_bytes(v, 7, &[0, 1, 2, 0xff]));
                        put_message(array, 1, |v| put_message(v, 5, |_| {}));
                        put_message(array, 1, |_| {});
                    })
                });
                kv(kvlist, 1, "inf", |v| {
                    put_tag(v, 4, wire::I64);
                    v.extend_from_slice(&f64::NEG_INFINITY.to_le_bytes());
                });
                kv(kvlist, 1, "empty", |v| put_bytes(v, 1, b""));
            })
        });
        put_uint(r, 2, 3);
        put_message(r, 3, |e| {
            put_bytes(e, 1, b"https://opentelemetry.io/schemas/1.26.0");
            put_bytes(e, 2, b"service");
            put_bytes(e, 3, b"service.name");
            put_bytes(e, 3, b"service.namespace");
            put_bytes(e, 4, b"service.version");
        });
    }

    fn scope(s: &mut Vec<u8>) {
        put_bytes(s, 1, b"io.opentelemetry.contrib");
        put_bytes(s, 2, b"1.0.0");
        kv(s, 3, "quote\"and\\slash", |v| {
            put_bytes(v, 1, "tab\tnl\n\u{1}😀\u{2028}".as_bytes())
        });
        put_uint(s, 4, 1);
    }

    fn traces() -> Vec<u8> {
        let mut out = Vec::new();
        put_message(&mut out, 1, |rs| {
            put_message(rs, 1, resource);
            put_message(rs, 2, |ss| {
                put_message(ss, 1, scope);
                put_message(ss, 2, |s| {
                    put_bytes(
                        s,
                        1,
                        &[
                            0x5b, 0x8e, 0xff, 0xf7, 0x98, 3, 0x81, 3, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f, 0xc6, 0x0c,
                        ],
                    );
                    put_bytes(s, 2, &[0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74]);
                    put_bytes(s, 3, b"rojo=00f067aa0ba902b7");
                    put_bytes(s, 4, &[0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x73]);
                    put_bytes(s, 5, "GET /api/ünïcode".as_bytes());
                    put_uint(s, 6, 2);
                    fixed64(s, 7, 1_544_712_660_000_000_001);
                    fixed64(s, 8, u64::MAX);
                    kv(s, 9, "http.status_code", |v| put_uint(v, 3, 200));
                    kv(s, 9, "ratio", |v| {
                        put_tag(v, 4, wire::I64);
                        v.extend_from_slice(&(-0.0f64).to_le_bytes());
                    });
                    put_uint(s, 10, 1);
                    put_message(s, 11, |e| {
                        fixed64(e, 1, 1_544_712_660_500_000_000);
                        put_bytes(e, 2, b"exception");
                        kv(e, 3, "exception.message", |v| put_bytes(v, 1, b"boom"));
                        put_uint(e, 4, 2);
                    });
                    put_uint(s, 12, 4);
                    put_message(s, 13, |l| {
                        put_bytes(l, 1, &[0xab; 16]);
                        put_bytes(l, 2, &[0xcd; 8]);
                        put_bytes(l, 3, b"k=v");
                        kv(l, 4, "link", |v| put_uint(v, 2, 1));
                        put_uint(l, 5, 7);
                        fixed32(l, 6, 0x301);
                    });
                    put_uint(s, 14, 5);
                    put_message(s, 15, |st| {
                        put_bytes(st, 2, b"deadline exceeded");
                        put_uint(st, 3, 2);
                    });
                    fixed32(s, 16, 0x101);
                });
                put_message(ss, 2, |s| {
                    put_bytes(s, 1, &[1; 16]);
                    put_bytes(s, 2, &[2; 8]);
                    put_uint(s, 6, (-3i64) as u64); // negative enum: 10-byte varint
                    put_message(s, 15, |_| {});
                });
                put_bytes(ss, 3, b"https://opentelemetry.io/schemas/1.4.0");
            });
            put_bytes(rs, 3, b"https://opentelemetry.io/schemas/1.4.0");
        });
        put_message(&mut out, 1, |rs| {
            put_message(rs, 2, |ss| put_message(ss, 2, |s| put_bytes(s, 5, b"second")))
        });
        out
    }

    fn logs() -> Vec<u8> {
        let mut out = Vec::new();
        put_message(&mut out, 1, |rl| {
            put_message(rl, 1, resource);
            put_message(rl, 2, |sl| {
                put_message(sl, 1, scope);
                put_message(sl, 2, |lr| {
                    fixed64(lr, 1, 1_700_000_000_123_456_789);
                    put_uint(lr, 2, 17);
                    put_bytes(lr, 3, b"ERROR");
                    put_message(lr, 5, |v| {
                        put_message(v, 6, |kvlist| {
                            kv(kvlist, 1, "message", |v| put_bytes(v, 1, "multi\nline ✓".as_bytes()));
                            kv(kvlist, 1, "count", |v| put_uint(v, 3, i64::MAX as u64));
                            kv(kvlist, 1, "min", |v| put_uint(v, 3, i64::MIN as u64));
                            kv(kvlist, 1, "pi", |v| {
                                put_tag(v, 4, wire::I64);
                                v.extend_from_slice(&std::f64::consts::PI.to_le_bytes());
                            });
                        })
                    });
                    kv(lr, 6, "log.file.name", |v| put_bytes(v, 1, b"app.log"));
                    put_uint(lr, 7, 2);
                    fixed32(lr, 8, 1);
                    put_bytes(lr, 9, &[0x0a; 16]);
                    put_bytes(lr, 10, &[0x0b; 8]);
                    fixed64(lr, 11, 1_700_000_000_223_456_789);
                    put_bytes(lr, 12, b"device.app.lifecycle");
                });
                put_message(sl, 2, |lr| put_message(lr, 5, |v| put_bytes(v, 1, b"")));
            });
        });
        out
    }

    fn metrics() -> Vec<u8> {
        let exemplar = |e: &mut Vec<u8>, as_int: bool| {
            fixed64(e, 2, 1_700_000_000_000_000_000);
            if !as_int {
                put_tag(e, 3, wire::I64);
                e.extend_from_slice(&0.0f64.to_le_bytes()); // oneof: written even when zero
            }
            put_bytes(e, 4, &[0x11; 8]);
            put_bytes(e, 5, &[0x22; 16]);
            if as_int {
                fixed64(e, 6, (-7i64) as u64);
            }
            kv(e, 7, "filtered", |v| put_uint(v, 2, 1));
        };
        let mut out = Vec::new();
        put_message(&mut out, 1, |rm| {
            put_message(rm, 1, resource);
            put_message(rm, 2, |sm| {
                put_message(sm, 1, scope);
                // Gauge with a double point and an int point.
                put_message(sm, 2, |m| {
                    put_bytes(m, 1, b"cpu.utilization");
                    put_bytes(m, 2, b"CPU use");
                    put_bytes(m, 3, b"1");
                    put_message(m, 5, |g| {
                        put_message(g, 1, |p| {
                            fixed64(p, 2, 1);
                            fixed64(p, 3, 2);
                            put_tag(p, 4, wire::I64);
                            p.extend_from_slice(&f64::INFINITY.to_le_bytes());
                            put_message(p, 5, |e| exemplar(e, false));
                            put_message(p, 5, |e| exemplar(e, true));
                            kv(p, 7, "cpu", |v| put_uint(v, 3, 0));
                            put_uint(p, 8, 1);
                        });
                        put_message(g, 1, |p| fixed64(p, 6, (-123i64) as u64));
                    });
                    kv(m, 12, "meta", |v| put_bytes(v, 1, b"data"));
                });
                // Sum.
                put_message(sm, 2, |m| {
                    put_bytes(m, 1, b"requests");
                    put_message(m, 7, |s| {
                        put_message(s, 1, |p| fixed64(p, 6, 10));
                        put_uint(s, 2, 2);
                        put_uint(s, 3, 1);
                    });
                });
                // Histogram with packed counts and bounds, optional sum/min/max.
                put_message(sm, 2, |m| {
                    put_bytes(m, 1, b"latency");
                    put_message(m, 9, |h| {
                        put_message(h, 1, |p| {
                            fixed64(p, 3, 5);
                            fixed64(p, 4, 6);
                            put_tag(p, 5, wire::I64);
                            p.extend_from_slice(&0.0f64.to_le_bytes()); // optional: present at zero
                            put_message(p, 6, |b| {
                                for c in [1u64, 0, 3, 2] {
                                    b.extend_from_slice(&c.to_le_bytes());
                                }
                            });
                            put_message(p, 7, |b| {
                                for x in [0.5f64, 1.0, 2.5e-7] {
                                    b.extend_from_slice(&x.to_le_bytes());
                                }
                            });
                            put_message(p, 8, |e| exemplar(e, false));
                            put_uint(p, 10, 1);
                            put_tag(p, 11, wire::I64);
                            p.extend_from_slice(&(-1.5f64).to_le_bytes());
                            put_tag(p, 12, wire::I64);
                            p.extend_from_slice(&1e300f64.to_le_bytes());
                        });
                        put_uint(h, 2, 1);
                    });
                });
                // Exponential histogram with negative scale and offset.
                put_message(sm, 2, |m| {
                    put_bytes(m, 1, b"latency.exp");
                    put_message(m, 10, |h| {
                        put_message(h, 1, |p| {
                            kv(p, 1, "route", |v| put_bytes(v, 1, b"/"));
                            fixed64(p, 4, 9);
                            put_tag(p, 5, wire::I64);
                            p.extend_from_slice(&12.25f64.to_le_bytes());
                            put_uint(p, 6, 3); // sint32 -2
                            fixed64(p, 7, 1);
                            put_message(p, 8, |b| {
                                put_uint(b, 1, 5); // sint32 -3
                                put_message(b, 2, |c| {
                                    for n in [1u64, 300, 0, u64::MAX] {
                                        wire::put_varint(c, n);
                                    }
                                });
                            });
                            put_message(p, 9, |b| put_uint(b, 1, 4)); // sint32 2, no counts
                            put_message(p, 11, |e| exemplar(e, true));
                            put_tag(p, 14, wire::I64);
                            p.extend_from_slice(&1e-9f64.to_le_bytes());
                        });
                        put_uint(h, 2, 2);
                    });
                });
                // Summary with non-finite quantile values.
                put_message(sm, 2, |m| {
                    put_bytes(m, 1, b"summary");
                    put_message(m, 11, |s| {
                        put_message(s, 1, |p| {
                            fixed64(p, 4, 3);
                            put_tag(p, 5, wire::I64);
                            p.extend_from_slice(&f64::NAN.to_le_bytes());
                            put_message(p, 6, |q| {
                                put_tag(q, 2, wire::I64);
                                q.extend_from_slice(&f64::NEG_INFINITY.to_le_bytes());
                            });
                            put_message(p, 6, |q| {
                                put_tag(q, 1, wire::I64);
                                q.extend_from_slice(&0.99f64.to_le_bytes());
                                put_tag(q, 2, wire::I64);
                                q.extend_from_slice(&123.456f64.to_le_bytes());
                            });
                            put_uint(p, 8, 1);
                        });
                    });
                });
                put_bytes(sm, 3, b"https://opentelemetry.io/schemas/1.4.0");
            });
        });
        out
    }

    #[test]
    fn round_trip_traces() {
        round_trip(Signal::Traces, &traces());
    }

    #[test]
    fn round_trip_logs() {
        round_trip(Signal::Logs, &logs());
    }

    #[test]
    fn round_trip_metrics() {
        round_trip(Signal::Metrics, &metrics());
        let json = String::from_utf8(protobuf_to_json(Signal::Metrics, &metrics()).unwrap()).unwrap();
        for part in [
            r#""bucketCounts":["1","0","3","2"]"#,
            r#""explicitBounds":[0.5,1,2.5e-7]"#,
            r#""sum":0,"#,
            r#""scale":-2"#,
            r#""positive":{"offset":-3,"bucketCounts":["1","300","0","18446744073709551615"]}"#,
            r#""negative":{"offset":2}"#,
            r#""asDouble":"Infinity""#,
            r#""asInt":"-123""#,
            r#""asInt":"-7""#,
            r#""sum":"NaN""#,
            r#""value":"-Infinity""#,
            r#""max":1e300"#,
            r#""zeroThreshold":1e-9"#,
            r#""spanId":"1111111111111111","traceId":"22222222222222222222222222222222""#,
        ] {
            assert!(json.contains(part), "{part} not in {json}");
        }
    }

    #[test]
    fn round_trip_empty_requests() {
        for s in Signal::ALL {
            round_trip(s, b"");
            assert_eq!(decode(s, "{}"), b"");
        }
    }

    #[test]
    fn round_trip_random_messages() {
        // Every message type of every signal, random canonical content.
        for seed in 0..600 {
            let mut rng = Rng::new(seed);
            let signal = Signal::ALL[(seed % 3) as usize];
            let mut pb = Vec::new();
            testgen::message(&mut rng, schema::request(signal), &mut pb, 0, 9);
            round_trip(signal, &pb);
        }
        // Responses and google.rpc.Status too.
        for seed in 0..100 {
            let mut rng = Rng::new(seed);
            for msg in [schema::response(Signal::ALL[(seed % 3) as usize]), &schema::RPC_STATUS] {
                let mut pb = Vec::new();
                testgen::message(&mut rng, msg, &mut pb, 0, 4);
                let json = message_to_json(msg, &pb).unwrap();
                assert_eq!(json_to_message(msg, &json).unwrap(), pb);
            }
        }
    }

    #[test]
    fn round_trip_at_max_depth() {
        // request(0) → ResourceLogs(1) → ScopeLogs(2) → LogRecord(3) → AnyValue(4), then
        // ArrayValue/AnyValue pairs down to exactly MAX_DEPTH.
        use crate::test_support::nested_log_body as nested;
        let fits = (MAX_DEPTH - 4) / 2;
        round_trip(Signal::Logs, &nested(fits));
        let e = protobuf_to_json(Signal::Logs, &nested(fits + 1))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("invalid protobuf: ArrayValue is nested deeper than 100 messages"),
            "{e}"
        );
        assert!(
            e.contains("(at resourceLogs[0].scopeLogs[0].logRecords[0].body.arrayValue.values[0]"),
            "{e}"
        );
        // The same depth in JSON.
        let mut json = String::from(r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":"#);
        for _ in 0..fits + 1 {
            json.push_str(r#"{"arrayValue":{"values":["#);
        }
        json.push_str(r#"{"stringValue":"leaf"}"#);
        for _ in 0..fits + 1 {
            json.push_str("]}}");
        }
        json.push_str("}]}]}]}");
        let e = decode_err(Signal::Logs, &json);
        assert!(
            e.starts_with("resourceLogs[0].scopeLogs[0].logRecords[0].body.arrayValue.values[0]."),
            "{e}"
        );
        assert!(e.ends_with(": ArrayValue is nested deeper than 100 messages"), "{e}");
    }

    // ---- the OTLP/JSON mapping ----

    /// The trace example of opentelemetry-proto's specification (examples/trace.json).
    const SPEC_TRACE_EXAMPLE: &str = r#"{
      "resourceSpans": [
        {
          "resource": {
            "attributes": [
              { "key": "service.name", "value": { "stringValue": "my.service" } }
            ]
          },
          "scopeSpans": [
            {
              "scope": {
                "name": "my.library",
                "version": "1.0.0",
                "attributes": [
                  { "key": "my.scope.attribute", "value": { "stringValue": "some scope attribute" } }
                ]
              },
              "spans": [
                {
                  "traceId": "5B8EFFF798038103D269B633813FC60C",
                  "spanId": "EEE19B7EC3C1B174",
                  "parentSpanId": "EEE19B7EC3C1B173",
                  "name": "I'm a server span",
                  "startTimeUnixNano": "1544712660000000000",
                  "endTimeUnixNano": "1544712661000000000",
                  "kind": 2,
                  "attributes": [
                    { "key": "my.span.attr", "value": { "stringValue": "some value" } }
                  ]
                }
              ]
            }
          ]
        }
      ]
    }"#;

    #[test]
    fn spec_trace_example() {
        let pb = decode(Signal::Traces, SPEC_TRACE_EXAMPLE);
        validate(Signal::Traces, &pb).unwrap();
        let span = [1, 2, 2];
        let at = |tail: &[u32]| get(&pb, &[&span[..], tail].concat());
        assert_eq!(
            at(&[1]).data,
            [0x5b, 0x8e, 0xff, 0xf7, 0x98, 0x03, 0x81, 0x03, 0xd2, 0x69, 0xb6, 0x33, 0x81, 0x3f, 0xc6, 0x0c]
        );
        assert_eq!(at(&[2]).data, [0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x74]);
        assert_eq!(at(&[4]).data, [0xee, 0xe1, 0x9b, 0x7e, 0xc3, 0xc1, 0xb1, 0x73]);
        assert_eq!(at(&[5]).data, b"I'm a server span");
        assert_eq!(
            (at(&[7]).wire_type, at(&[7]).int),
            (wire::I64, 1_544_712_660_000_000_000)
        );
        assert_eq!(
            (at(&[8]).wire_type, at(&[8]).int),
            (wire::I64, 1_544_712_661_000_000_000)
        );
        assert_eq!((at(&[6]).wire_type, at(&[6]).int), (wire::VARINT, 2));
        assert_eq!(at(&[9, 1]).data, b"my.span.attr");
        assert_eq!(at(&[9, 2, 1]).data, b"some value");
        assert_eq!(get(&pb, &[1, 1, 1, 1]).data, b"service.name");
        assert_eq!(get(&pb, &[1, 1, 1, 2, 1]).data, b"my.service");
        assert_eq!(get(&pb, &[1, 2, 1, 1]).data, b"my.library");
        assert_eq!(get(&pb, &[1, 2, 1, 2]).data, b"1.0.0");
        assert_eq!(get(&pb, &[1, 2, 1, 3, 2, 1]).data, b"some scope attribute");
        // And back: ids as lowercase hex, times as strings.
        let json = String::from_utf8(protobuf_to_json(Signal::Traces, &pb).unwrap()).unwrap();
        assert!(
            json.contains(r#""traceId":"5b8efff798038103d269b633813fc60c""#),
            "{json}"
        );
        assert!(json.contains(r#""startTimeUnixNano":"1544712660000000000""#), "{json}");
    }

    #[test]
    fn int64_as_number_or_string() {
        let span =
            |t: &str| format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"startTimeUnixNano":{t}}}]}}]}}]}}"#);
        let time = |json: &str| get(&decode(Signal::Traces, json), &[1, 2, 2, 7]).int;
        // Above 2^53: numbers are read exactly, never through a double.
        assert_eq!(time(&span("1544712660000000001")), 1_544_712_660_000_000_001);
        assert_eq!(time(&span("\"1544712660000000001\"")), 1_544_712_660_000_000_001);
        assert_eq!(time(&span("\"18446744073709551615\"")), u64::MAX);
        assert_eq!(time(&span("1.5e3")), 1500);
        assert_eq!(time(&span("\"1e3\"")), 1000);
        assert_eq!(time(&span("2.000")), 2);
        let e = decode_err(Signal::Traces, &span("18446744073709551616"));
        assert_eq!(
            e,
            "resourceSpans[0].scopeSpans[0].spans[0].startTimeUnixNano: \
             18446744073709551616 is out of range for fixed64"
        );
        let e = decode_err(Signal::Traces, &span("-1"));
        assert!(e.ends_with("startTimeUnixNano: -1 is out of range for fixed64"), "{e}");
        let e = decode_err(Signal::Traces, &span("1.5"));
        assert!(e.ends_with("startTimeUnixNano: expected an integer, got 1.5"), "{e}");
        let e = decode_err(Signal::Traces, &span("\"soon\""));
        assert!(
            e.ends_with("startTimeUnixNano: expected an integer, got \"soon\""),
            "{e}"
        );
        let e = decode_err(Signal::Traces, &span("true"));
        assert_eq!(
            e,
            "resourceSpans[0].scopeSpans[0].spans[0].startTimeUnixNano: expected an integer, got a boolean"
        );

        // int64 (AnyValue.intValue) both ways, negative too.
        let log = |v: &str| {
            format!(r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"body":{{"intValue":{v}}}}}]}}]}}]}}"#)
        };
        let int = |json: &str| get(&decode(Signal::Logs, json), &[1, 2, 2, 5, 3]).int as i64;
        assert_eq!(int(&log("-9223372036854775808")), i64::MIN);
        assert_eq!(int(&log("\"-9223372036854775808\"")), i64::MIN);
        assert_eq!(int(&log("\"42\"")), 42);
        assert_eq!(int(&log("0")), 0); // oneof: present at zero
        assert!(decode_err(Signal::Logs, &log("9223372036854775808")).contains("out of range"));
        // 32-bit fields accept strings too, and check their range.
        let dropped = |v: &str| format!(r#"{{"resourceSpans":[{{"resource":{{"droppedAttributesCount":{v}}}}}]}}"#);
        assert_eq!(get(&decode(Signal::Traces, &dropped("\"7\"")), &[1, 1, 2]).int, 7);
        let e = decode_err(Signal::Traces, &dropped("4294967296"));
        assert_eq!(
            e,
            "resourceSpans[0].resource.droppedAttributesCount: 4294967296 is out of range for uint32"
        );
        // A 5 MB number comes back as a short prefix, whichever way it is wrong.
        let digits = "9".repeat(5 * 1024 * 1024);
        for (json, words) in [
            (span(&digits), "is out of range for fixed64"),
            (span(&format!("\"{digits}\"")), "is out of range for fixed64"),
            (span(&format!("1.{digits}")), "expected an integer, got 1.999"),
            (log(&format!("-{digits}")), "is out of range for int64"),
        ] {
            let signal = if json.contains("resourceLogs") {
                Signal::Logs
            } else {
                Signal::Traces
            };
            let e = decode_err(signal, &json);
            assert!(
                e.len() < 300 && e.contains(words) && e.contains('…'),
                "{}",
                &e[..e.len().min(300)]
            );
        }
    }

    #[test]
    fn enums_by_number_or_name() {
        let span = |k: &str| {
            format!(
                r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"kind":{k},"status":{{"code":"STATUS_CODE_ERROR"}}}}]}}]}}]}}"#
            )
        };
        let pb = decode(Signal::Traces, &span("\"SPAN_KIND_CLIENT\""));
        assert_eq!(get(&pb, &[1, 2, 2, 6]).int, 3);
        assert_eq!(get(&pb, &[1, 2, 2, 15, 3]).int, 2);
        assert_eq!(get(&decode(Signal::Traces, &span("3")), &[1, 2, 2, 6]).int, 3);
        // Unknown numbers are kept (proto3 enums are open); unknown names are errors.
        assert_eq!(get(&decode(Signal::Traces, &span("99")), &[1, 2, 2, 6]).int, 99);
        assert_eq!(get(&decode(Signal::Traces, &span("-1")), &[1, 2, 2, 6]).int, u64::MAX);
        let e = decode_err(Signal::Traces, &span("\"SERVER\""));
        assert_eq!(
            e,
            "resourceSpans[0].scopeSpans[0].spans[0].kind: unknown SpanKind value \"SERVER\""
        );
        assert_eq!(get(&decode(Signal::Traces, &span("\"3\"")), &[1, 2, 2, 6]).int, 3);
        let e = decode_err(Signal::Traces, &span("\"3x\""));
        assert!(
            e.ends_with("kind: expected an integer or enum value name, got \"3x\""),
            "{e}"
        );
        let e = decode_err(Signal::Traces, &span("2.5"));
        assert!(
            e.ends_with("kind: expected an integer or enum value name, got 2.5"),
            "{e}"
        );
        // The default is left out, by name or number.
        let pb = decode(Signal::Traces, &span("\"SPAN_KIND_UNSPECIFIED\""));
        assert!(all(get(&pb, &[1, 2, 2]).data, 6).is_empty());

        let json = r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"severityNumber":"SEVERITY_NUMBER_WARN4"}]}]}]}"#;
        assert_eq!(get(&decode(Signal::Logs, json), &[1, 2, 2, 2]).int, 16);
        let json = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"sum":{"aggregationTemporality":"AGGREGATION_TEMPORALITY_CUMULATIVE","isMonotonic":true}}]}]}]}"#;
        let pb = decode(Signal::Metrics, json);
        assert_eq!(get(&pb, &[1, 2, 2, 7, 2]).int, 2);
        assert_eq!(get(&pb, &[1, 2, 2, 7, 3]).int, 1);
    }

    #[test]
    fn snake_case_keys() {
        let camel = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0102","parentSpanId":"03","startTimeUnixNano":"5","droppedAttributesCount":2,"attributes":[{"key":"k","value":{"intValue":"1"}}]}],"schemaUrl":"s"}]}]}"#;
        let snake = r#"{"resource_spans":[{"scope_spans":[{"spans":[{"trace_id":"0102","parent_span_id":"03","start_time_unix_nano":"5","dropped_attributes_count":2,"attributes":[{"key":"k","value":{"int_value":"1"}}]}],"schema_url":"s"}]}]}"#;
        assert_eq!(decode(Signal::Traces, snake), decode(Signal::Traces, camel));
        // Both spellings of one field is a duplicate.
        let e = decode_err(
            Signal::Traces,
            r#"{"resourceSpans":[{"schemaUrl":"a","schema_url":"b"}]}"#,
        );
        assert_eq!(e, "resourceSpans[0].schemaUrl: field given more than once");
    }

    #[test]
    fn unknown_keys_are_ignored() {
        let plain = r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"a","kind":1}]}]}]}"#;
        let noisy = r#"{"extra":{"deep":[1,2,{"x":null}],"s":"\u00e9\"}"},"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"a","futureField":[true,false,null,-1.5e-3,"x",[],{}],"kind":1,"Name":"b"}],"unknown":123}],"droppedFoo":"x"}],"zzz":null}"#;
        assert_eq!(decode(Signal::Traces, noisy), decode(Signal::Traces, plain));
        // But they must still be valid JSON.
        let e = decode_err(Signal::Traces, r#"{"extra":[1,2,}"#);
        assert!(
            e.starts_with("ExportTraceServiceRequest: invalid JSON at byte 14: expected a value, found '}'"),
            "{e}"
        );
    }

    #[test]
    fn nulls_are_absent() {
        let json =
            r#"{"resourceSpans":[{"resource":null,"scopeSpans":[{"scope":null,"spans":null,"schemaUrl":null}]}]}"#;
        let pb = decode(Signal::Traces, json);
        let mut expected = Vec::new();
        put_message(&mut expected, 1, |rs| put_message(rs, 2, |_| {}));
        assert_eq!(pb, expected);
        // A null member of a oneof does not count as set.
        let json =
            r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":null,"intValue":"3"}}]}]}]}"#;
        assert_eq!(get(&decode(Signal::Logs, json), &[1, 2, 2, 5, 3]).int, 3);
        let e = decode_err(Signal::Traces, r#"{"resourceSpans":[null]}"#);
        assert_eq!(e, "resourceSpans[0]: null is not allowed in a list");
    }

    #[test]
    fn doubles_and_non_finite_strings() {
        let body = |v: &str| {
            format!(r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"body":{{"doubleValue":{v}}}}}]}}]}}]}}"#)
        };
        let double = |v: &str| f64::from_bits(get(&decode(Signal::Logs, &body(v)), &[1, 2, 2, 5, 4]).int);
        assert!(double("\"NaN\"").is_nan());
        assert_eq!(double("\"Infinity\""), f64::INFINITY);
        assert_eq!(double("\"-Infinity\""), f64::NEG_INFINITY);
        assert_eq!(double("\"2.5\""), 2.5);
        assert_eq!(double("1E2"), 100.0);
        assert_eq!(double("-0").to_bits(), (-0.0f64).to_bits());
        assert_eq!(double("0.30000000000000004"), 0.1 + 0.2);
        assert_eq!(double("5e-324"), 5e-324);
        let e = decode_err(Signal::Logs, &body("1e400"));
        assert!(
            e.ends_with("body.doubleValue: 1e400 is out of range for a double"),
            "{e}"
        );
        let e = decode_err(Signal::Logs, &body(&format!("1{}", "0".repeat(5 * 1024 * 1024))));
        assert!(
            e.len() < 300 && e.ends_with("… is out of range for a double"),
            "{}",
            &e[..e.len().min(300)]
        );
        let e = decode_err(Signal::Logs, &body("\"nan\""));
        assert!(e.ends_with("body.doubleValue: expected a number, got \"nan\""), "{e}");
        let e = decode_err(Signal::Logs, &body("NaN"));
        assert!(e.contains("body.doubleValue: invalid JSON at byte"), "{e}");
    }

    #[test]
    fn strings_bytes_and_escapes() {
        let body = |v: &str| format!(r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{{"body":{v}}}]}}]}}]}}"#);
        let value = |v: &str| get(&decode(Signal::Logs, &body(v)), &[1, 2, 2, 5]).data.to_vec();
        let string = |s: &str| value(&format!(r#"{{"stringValue":{s}}}"#))[2..].to_vec();
        assert_eq!(string(r#""a\"b\\c\/d\b\f\n\r\t""#), b"a\"b\\c/d\x08\x0c\n\r\t");
        assert_eq!(string(r#""\u00e9\u4e2d\ud83d\ude00""#), "é中😀".as_bytes());
        // Lone surrogates (JavaScript writes them) become U+FFFD.
        assert_eq!(string(r#""\ud800x\udc00""#), "\u{fffd}x\u{fffd}".as_bytes());
        assert_eq!(string(r#""\ud800\u0041""#), "\u{fffd}A".as_bytes());
        assert_eq!(string("\"raw ✓ 😀\""), "raw ✓ 😀".as_bytes());
        // bytes: standard or URL-safe base64, with or without padding.
        for b64 in ["\"+/8=\"", "\"+/8\"", "\"-_8=\"", "\"-_8\""] {
            assert_eq!(
                value(&format!(r#"{{"bytesValue":{b64}}}"#)),
                [0x3a, 2, 0xfb, 0xff],
                "{b64}"
            );
        }
        let e = decode_err(Signal::Logs, &body(r#"{"bytesValue":"***"}"#));
        assert!(
            e.starts_with("resourceLogs[0].scopeLogs[0].logRecords[0].body.bytesValue: invalid base64"),
            "{e}"
        );
        let e = decode_err(Signal::Logs, &body(r#"{"stringValue":"a\x"}"#));
        assert!(e.contains("body.stringValue: invalid JSON at byte"), "{e}");
        assert!(e.contains("invalid escape in string"), "{e}");
        let e = decode_err(Signal::Logs, &body("{\"stringValue\":\"tab\there\"}"));
        assert!(e.contains("control character in string"), "{e}");
    }

    #[test]
    fn oneof_and_duplicates() {
        let e = decode_err(
            Signal::Logs,
            r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"a","intValue":1}}]}]}]}"#,
        );
        assert_eq!(
            e,
            "resourceLogs[0].scopeLogs[0].logRecords[0].body.intValue: \
             only one of \"stringValue\" and \"intValue\" may be set (oneof value)"
        );
        let e = decode_err(
            Signal::Metrics,
            r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"gauge":{},"sum":{}}]}]}]}"#,
        );
        assert!(
            e.ends_with("metrics[0].sum: only one of \"gauge\" and \"sum\" may be set (oneof data)"),
            "{e}"
        );
        let e = decode_err(Signal::Traces, r#"{"resourceSpans":[],"resourceSpans":[]}"#);
        assert_eq!(e, "resourceSpans: field given more than once");
    }

    // ---- errors ----

    #[test]
    fn empty_body() {
        for body in ["", " \n\t ", "\u{feff}"] {
            assert_eq!(decode_err(Signal::Traces, body), "empty JSON body");
        }
    }

    #[test]
    fn invalid_hex_names_the_field() {
        let span = |id: &str| {
            format!(r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"name":"x"}},{{"traceId":{id}}}]}}]}}]}}"#)
        };
        let e = decode_err(Signal::Traces, &span("\"5b8efff798038103d269b633813fc6zz\""));
        assert_eq!(
            e,
            "resourceSpans[0].scopeSpans[0].spans[1].traceId: \
             invalid hex: 'z' at offset 30 in \"5b8efff798038103d269b633813fc6zz\""
        );
        let e = decode_err(Signal::Traces, &span("\"abc\""));
        assert_eq!(
            e,
            "resourceSpans[0].scopeSpans[0].spans[1].traceId: invalid hex: odd number of digits (3)"
        );
        let e = decode_err(Signal::Traces, &span("\"é\""));
        assert!(e.ends_with("traceId: invalid hex: 'é' at offset 0 in \"é\""), "{e}");
        // Any even length is accepted here (ingest checks lengths per record); empty is absent.
        let pb = decode(Signal::Traces, &span("\"ABCDEF\""));
        assert_eq!(all(get(&pb, &[1, 2]).data, 2)[1].data, [0x0a, 3, 0xab, 0xcd, 0xef]);
        let pb = decode(Signal::Traces, &span("\"\""));
        assert_eq!(all(get(&pb, &[1, 2]).data, 2)[1].data, b"");
        // Ids elsewhere are hex too.
        let json = r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"spanId":"0x12"}]}]}]}"#;
        assert!(
            decode_err(Signal::Logs, json).ends_with("logRecords[0].spanId: invalid hex: 'x' at offset 1 in \"0x12\"")
        );
        let json = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"gauge":{"dataPoints":[{"exemplars":[{"traceId":"g0"}]}]}}]}]}]}"#;
        assert!(decode_err(Signal::Metrics, json).contains("dataPoints[0].exemplars[0].traceId: invalid hex"));
    }

    #[test]
    fn wrong_types_name_the_path() {
        let cases = [
            (r#"[]"#, "ExportTraceServiceRequest: expected an object, got an array"),
            (
                r#"{"resourceSpans":{}}"#,
                "resourceSpans: expected an array, got an object",
            ),
            (
                r#"{"resourceSpans":["x"]}"#,
                "resourceSpans[0]: expected an object, got a string",
            ),
            (
                r#"{"resourceSpans":[{"schemaUrl":5}]}"#,
                "resourceSpans[0].schemaUrl: expected a string, got a number",
            ),
            (
                r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{},{},{},{"startTimeUnixNano":{}}]}]}]}"#,
                "resourceSpans[0].scopeSpans[0].spans[3].startTimeUnixNano: expected an integer, got an object",
            ),
            (
                r#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":12}]}]}]}"#,
                "resourceSpans[0].scopeSpans[0].spans[0].traceId: expected a string, got a number",
            ),
            (
                r#"{"resourceSpans":[{"resource":{"attributes":[{"key":"k","value":{"boolValue":"true"}}]}}]}"#,
                "resourceSpans[0].resource.attributes[0].value.boolValue: expected a boolean, got a string",
            ),
        ];
        for (json, expected) in cases {
            assert_eq!(decode_err(Signal::Traces, json), expected, "{json}");
        }
        let json = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"histogram":{"dataPoints":[{"bucketCounts":["1",true]}]}}]}]}]}"#;
        assert_eq!(
            decode_err(Signal::Metrics, json),
            "resourceMetrics[0].scopeMetrics[0].metrics[0].histogram.dataPoints[0].bucketCounts[1]: \
             expected an integer, got a boolean"
        );
        let json = r#"{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"histogram":{"dataPoints":[{"explicitBounds":1}]}}]}]}]}"#;
        assert!(decode_err(Signal::Metrics, json)
            .ends_with("dataPoints[0].explicitBounds: expected an array, got a number"));
    }

    #[test]
    fn invalid_utf8_names_the_field() {
        let mut json = br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"severityText":"ab"#.to_vec();
        json.extend_from_slice(b"\xff\"}]}]}]}");
        let e = json_to_protobuf(Signal::Logs, &json).unwrap_err().to_string();
        assert_eq!(
            e,
            "resourceLogs[0].scopeLogs[0].logRecords[0].severityText: \
             invalid JSON: the string at byte 63 is not valid UTF-8"
        );
        // Outside strings it is a syntax error.
        let e = json_to_protobuf(Signal::Logs, b"{\xff}").unwrap_err().to_string();
        assert_eq!(
            e,
            "ExportLogsServiceRequest: invalid JSON at byte 1: expected a string, found byte 0xff"
        );
    }

    #[test]
    fn syntax_errors() {
        let cases = [
            ("{", "ExportTraceServiceRequest: invalid JSON: unexpected end of input (expected a string)"),
            ("{\"resourceSpans\"", "ExportTraceServiceRequest: invalid JSON: unexpected end of input (expected ':')"),
            ("{\"resourceSpans\":[", "resourceSpans[0]: invalid JSON: unexpected end of input (expected an object)"),
            ("{\"resourceSpans\":[{}", "resourceSpans: invalid JSON: unexpected end of input (expected ',' or ']')"),
            ("{} {}", "ExportTraceServiceRequest: invalid JSON at byte 3: unexpected data after the top-level object, found '{'"),
            ("{\"a\":tru}", "ExportTraceServiceRequest: invalid JSON at byte 5: invalid literal, found 't'"),
            ("{\"a\":01}", "ExportTraceServiceRequest: invalid JSON at byte 5: invalid number, found '0'"),
            ("{\"a\":1.}", "ExportTraceServiceRequest: invalid JSON at byte 5: invalid number, found '1'"),
            ("{\"a\":\"x}", "ExportTraceServiceRequest: invalid JSON: unexpected end of input (unterminated string)"),
            ("{,}", "ExportTraceServiceRequest: invalid JSON at byte 1: expected a string, found ','"),
        ];
        for (json, expected) in cases {
            assert_eq!(decode_err(Signal::Traces, json), expected, "{json}");
        }
        let deep = format!("{{\"x\":{}{}}}", "[".repeat(200), "]".repeat(200));
        assert!(decode_err(Signal::Traces, &deep).contains("unknown value nested deeper than 128 levels"));
    }

    #[test]
    fn garbage_never_panics() {
        // Mutated bodies through all three walkers: errors are fine, panics are not.
        let mut rng = Rng::new(7);
        let seeds: Vec<(Signal, Vec<u8>)> = vec![
            (Signal::Traces, traces()),
            (Signal::Logs, logs()),
            (Signal::Metrics, metrics()),
        ];
        for round in 0..3000 {
            let (signal, pb) = &seeds[round % 3];
            let json = protobuf_to_json(*signal, pb).unwrap();
            for mut body in [pb.clone(), json] {
                for _ in 0..1 + rng.below(4) {
                    if body.is_empty() {
                        break;
                    }
                    let at = rng.below(body.len() as u64) as usize;
                    match rng.below(4) {
                        0 => body[at] = rng.next() as u8,
                        1 => body.truncate(at),
                        2 => {
                            body.remove(at);
                        }
                        _ => {
                            let specials = b"\"{}[],:\\0-e.u\xff";
                            body.insert(at, specials[rng.below(specials.len() as u64) as usize]);
                        }
                    }
                }
                let _ = validate(*signal, &body);
                let _ = protobuf_to_json(*signal, &body);
                if let Ok(pb) = json_to_protobuf(*signal, &body) {
                    // Whatever decodes is valid protobuf that encodes again.
                    validate(*signal, &pb).unwrap();
                    protobuf_to_json(*signal, &pb).unwrap();
                }
            }
        }
    }
}
