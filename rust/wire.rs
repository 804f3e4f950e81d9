//! Protobuf wire format: a zero-copy field reader and the few writers the pipeline needs.
//!
//! Stages slice messages with this rather than materializing them: a span is read for its
//! trace id and status, then copied through as the bytes it arrived as.

use crate::error::{CoreError, Result};

pub const VARINT: u8 = 0;
pub const I64: u8 = 1;
pub const LEN: u8 = 2;
pub const I32: u8 = 5;

/// One field of a message: its number, wire type and value. `data` borrows the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field<'a> {
    pub number: u32,
    pub wire_type: u8,
    /// The decoded value for VARINT / I64 / I32 fields; the length for LEN fields.
    pub int: u64,
    /// The payload of a LEN field (empty for the other wire types).
    pub data: &'a [u8],
    /// The whole field as it appears on the wire, tag included, for copying through.
    pub raw: &'a [u8],
}

/// Reads a base-128 varint at `buf[*pos..]`, advancing `pos`.
#[inline]
pub fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64> {
    // Most tags and lengths fit one byte: answer those without entering the loop.
    match buf.get(*pos) {
        Some(&byte) if byte < 0x80 => {
            *pos += 1;
            Ok(u64::from(byte))
        }
        _ => read_varint_long(buf, pos),
    }
}

fn read_varint_long(buf: &[u8], pos: &mut usize) -> Result<u64> {
    let mut value: u64 = 0;
    let mut shift = 0u32;
    loop {
        let Some(&byte) = buf.get(*pos) else {
            return Err(malformed("truncated protobuf: varint runs past the end of the message"));
        };
        *pos += 1;
        if shift == 63 && byte > 1 {
            return Err(malformed("invalid protobuf: varint overflows 64 bits"));
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 63 {
            return Err(malformed("invalid protobuf: varint longer than 10 bytes"));
        }
    }
}

#[cold]
fn malformed(message: &'static str) -> CoreError {
    CoreError::decode(message)
}

/// Iterates the fields of one message without copying. Yields an error once, then stops.
pub struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    failed: bool,
}

impl<'a> Fields<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Fields {
            buf,
            pos: 0,
            failed: false,
        }
    }

    // Always inlined: each walker then keeps only the parts of `Field` it reads.
    #[inline(always)]
    fn next_field(&mut self) -> Result<Field<'a>> {
        let start = self.pos;
        let key = read_varint(self.buf, &mut self.pos)?;
        let number = key >> 3;
        let wire_type = (key & 7) as u8;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return Err(bad_number(number));
        }
        // Branches, most frequent first, rather than a `match`'s jump table (perf: the indirect
        // jump was a sixth of this function).
        let (int, data) = if wire_type == LEN {
            let len = read_varint(self.buf, &mut self.pos)?;
            let len = usize::try_from(len).map_err(|_| truncated(number))?;
            let data = self.take(len).map_err(|_| truncated(number))?;
            (len as u64, data)
        } else if wire_type == VARINT {
            (read_varint(self.buf, &mut self.pos)?, &[][..])
        } else if wire_type == I64 {
            (u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")), &[][..])
        } else if wire_type == I32 {
            (
                u64::from(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"))),
                &[][..],
            )
        } else {
            return Err(bad_wire_type(number, wire_type));
        };
        Ok(Field {
            number: number as u32,
            wire_type,
            int,
            data,
            raw: &self.buf[start..self.pos],
        })
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&end| end <= self.buf.len());
        let Some(end) = end else {
            return Err(malformed(
                "truncated protobuf: fixed-width value runs past the end of the message",
            ));
        };
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }
}

#[cold]
fn bad_number(number: u64) -> CoreError {
    CoreError::decode(format!("invalid protobuf: field number {number}"))
}

#[cold]
fn bad_wire_type(number: u64, wire_type: u8) -> CoreError {
    CoreError::decode(format!(
        "invalid protobuf: field {number} has unsupported wire type {wire_type}"
    ))
}

#[cold]
fn truncated(number: u64) -> CoreError {
    CoreError::decode(format!(
        "truncated protobuf: field {number} is longer than the bytes that remain"
    ))
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<Field<'a>>;

    // Inlined into each walker's loop: a call per field cost about a tenth of a walk (perf).
    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.pos >= self.buf.len() {
            return None;
        }
        let item = self.next_field();
        self.failed = item.is_err();
        Some(item)
    }
}

#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

#[inline]
/// A fixed64 field (`double`, `fixed64`): the value's 8 bytes, little-endian.
pub fn put_fixed64(out: &mut Vec<u8>, number: u32, value: u64) {
    put_tag(out, number, I64);
    out.extend_from_slice(&value.to_le_bytes());
}

pub fn put_tag(out: &mut Vec<u8>, number: u32, wire_type: u8) {
    put_varint(out, (u64::from(number) << 3) | u64::from(wire_type));
}

/// Writes a length-delimited field.
#[inline]
pub fn put_bytes(out: &mut Vec<u8>, number: u32, data: &[u8]) {
    put_tag(out, number, LEN);
    put_varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

/// Writes a varint field.
#[inline]
pub fn put_uint(out: &mut Vec<u8>, number: u32, value: u64) {
    put_tag(out, number, VARINT);
    put_varint(out, value);
}

/// Length of `value` as a varint, for sizing a length prefix before writing the body.
#[inline]
pub fn varint_len(value: u64) -> usize {
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Writes a length-delimited field whose body is produced by `body`, without a temporary
/// buffer: one byte is held for the length (enough below 128 bytes, most fields); a longer body
/// is shifted right by the extra bytes its length prefix needs.
pub fn put_message(out: &mut Vec<u8>, number: u32, body: impl FnOnce(&mut Vec<u8>)) {
    put_tag(out, number, LEN);
    let start = out.len();
    out.push(0);
    body(out);
    let len = out.len() - start - 1;
    if len < 0x80 {
        out[start] = len as u8;
        return;
    }
    let prefix = varint_len(len as u64);
    out.resize(out.len() + prefix - 1, 0);
    out.copy_within(start + 1..start + 1 + len, start + prefix);
    let mut value = len as u64;
    for byte in &mut out[start..start + prefix] {
        *byte = (value as u8 & 0x7f) | if value >= 0x80 { 0x80 } else { 0 };
        value >>= 7;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trip() {
        for v in [0u64, 1, 127, 128, 300, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            assert_eq!(buf.len(), varint_len(v), "length of {v}");
            let mut pos = 0;
            assert_eq!(read_varint(&buf, &mut pos).unwrap(), v);
            assert_eq!(pos, buf.len());
        }
    }

    #[test]
    fn varint_errors() {
        let mut pos = 0;
        assert!(read_varint(&[0x80, 0x80], &mut pos).is_err());
        let mut pos = 0;
        assert!(read_varint(&[0xff; 11], &mut pos).is_err());
    }

    #[test]
    fn fields_zero_copy() {
        let mut msg = Vec::new();
        put_uint(&mut msg, 1, 150);
        put_bytes(&mut msg, 2, b"testing");
        msg.extend_from_slice(&[(3 << 3) | I64]);
        msg.extend_from_slice(&7u64.to_le_bytes());
        let fields: Vec<_> = Fields::new(&msg).collect::<Result<_>>().unwrap();
        assert_eq!(fields.len(), 3);
        assert_eq!((fields[0].number, fields[0].int), (1, 150));
        assert_eq!(fields[1].data, b"testing");
        assert_eq!(fields[2].int, 7);
        let joined: Vec<u8> = fields.iter().flat_map(|f| f.raw.iter().copied()).collect();
        assert_eq!(joined, msg);
    }

    #[test]
    fn truncated_len_field_is_an_error() {
        let mut msg = Vec::new();
        put_bytes(&mut msg, 1, b"abcdef");
        msg.truncate(msg.len() - 2);
        let err = Fields::new(&msg).collect::<Result<Vec<_>>>().unwrap_err();
        assert!(err.to_string().contains("field 1"), "{err}");
    }

    #[test]
    fn put_message_prefixes_length() {
        for n in [0usize, 5, 127, 128, 20_000] {
            let mut out = vec![9u8];
            put_message(&mut out, 4, |o| o.extend(std::iter::repeat_n(7u8, n)));
            let fields: Vec<_> = Fields::new(&out[1..]).collect::<Result<_>>().unwrap();
            assert_eq!(fields.len(), 1);
            assert_eq!(fields[0].number, 4);
            assert_eq!(fields[0].data.len(), n);
            assert_eq!(out[0], 9);
        }
    }
}
