//! A small zero-copy MessagePack reader: enough for Fluent Bit's events and the forward protocol
//! (no dependency; strings and binaries borrow the input). Bounded: container lengths are checked
//! against the bytes that remain before anything is allocated, and nesting is capped.

use std::borrow::Cow;

use super::node::{self, Entry, Node};
use crate::error::CoreError;

/// Deepest nesting accepted (a record nested deeper is malformed, not a stack overflow).
const MAX_DEPTH: usize = 64;

/// One MessagePack value. `Str` keeps raw bytes: a non-UTF-8 string is read lossily later.
#[derive(Debug, Clone, PartialEq)]
pub enum Mp<'a> {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'a [u8]),
    Bin(&'a [u8]),
    Array(Vec<Mp<'a>>),
    Map(Vec<(Mp<'a>, Mp<'a>)>),
    Ext(i8, &'a [u8]),
}

impl<'a> Mp<'a> {
    pub fn as_str(&self) -> Option<&'a [u8]> {
        match self {
            Mp::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The entry of a map whose key is the string `key`.
    pub fn get(&self, key: &str) -> Option<&Mp<'a>> {
        match self {
            Mp::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key.as_bytes()))
                .map(|(_, v)| v),
            _ => None,
        }
    }
}

/// Whether a failure means "more bytes needed" (a stream reader waits) or "malformed".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    Truncated,
    Invalid(String),
}

impl From<ReadError> for CoreError {
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Truncated => CoreError::decode("truncated msgpack: a value runs past the end of the body"),
            ReadError::Invalid(msg) => CoreError::decode(format!("invalid msgpack: {msg}")),
        }
    }
}

/// How far `Reader::skip_more` got over a value that has not arrived whole: where to go on
/// from, and how many values are still to step over there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Skipping {
    pub pos: usize,
    pending: usize,
}

impl Default for Skipping {
    /// One value, from the start.
    fn default() -> Self {
        Skipping { pos: 0, pending: 1 }
    }
}

/// Reads values back to back from one buffer.
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// The next value; on error the position is unspecified.
    pub fn value(&mut self) -> std::result::Result<Mp<'a>, ReadError> {
        self.read(0)
    }

    /// Back to `pos` (a position this reader was at), to read a value again another way.
    pub fn seek(&mut self, pos: usize) {
        self.pos = pos.min(self.buf.len());
    }

    /// The next byte, not consumed.
    pub fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// The next value as a `Node`: what `value()` then `node::from_mp` give, with the same errors
    /// at the same positions, without the `Mp` tree.
    pub fn node(&mut self) -> std::result::Result<Node<'a>, ReadError> {
        self.read_node(0)
    }

    /// An array's header: its length, the header consumed; `None` (nothing consumed) when the
    /// next value is not an array. Its items are then read with the `*_in` readers.
    pub fn array_header(&mut self) -> std::result::Result<Option<usize>, ReadError> {
        let count = match self.peek() {
            Some(m @ 0x90..=0x9f) => {
                self.pos += 1;
                usize::from(m & 0x0f)
            }
            Some(m @ (0xdc | 0xdd)) => {
                self.pos += 1;
                self.len(if m == 0xdc { 2 } else { 4 })?
            }
            _ => return Ok(None),
        };
        self.check_count(count)?;
        Ok(Some(count))
    }

    /// `value()` for an item of an array whose header `array_header` read.
    pub fn value_in(&mut self) -> std::result::Result<Mp<'a>, ReadError> {
        self.read(1)
    }

    /// `node()` for an item of an array whose header `array_header` read.
    pub fn node_in(&mut self) -> std::result::Result<Node<'a>, ReadError> {
        self.read_node(1)
    }

    /// Steps over the next value without building it: how a stream reader learns whether a
    /// whole message has arrived, without allocating.
    pub fn skip(&mut self) -> std::result::Result<(), ReadError> {
        let mut pending = 1;
        self.skip_pending(&mut pending)
    }

    /// `skip`, resumed where `state` says an earlier call on a shorter prefix of `buf` stopped:
    /// Ok once the value is whole (`state.pos` is then its end), `Truncated` with `state` where
    /// to go on from. A message trickling in is stepped over once, not once per read.
    pub fn skip_more(buf: &'a [u8], state: &mut Skipping) -> std::result::Result<(), ReadError> {
        let mut reader = Reader { buf, pos: state.pos };
        let out = reader.skip_pending(&mut state.pending);
        state.pos = reader.pos;
        out
    }

    /// Steps over `pending` values; on `Truncated`, stops at the start of the one cut short.
    fn skip_pending(&mut self, pending: &mut usize) -> std::result::Result<(), ReadError> {
        while *pending > 0 {
            let start = self.pos;
            match self.skip_one() {
                Ok(children) => *pending = (*pending - 1).saturating_add(children),
                Err(ReadError::Truncated) => {
                    self.pos = start;
                    return Err(ReadError::Truncated);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Steps over one value's own bytes; returns how many values it contains.
    fn skip_one(&mut self) -> std::result::Result<usize, ReadError> {
        let marker = self.take(1)?[0];
        let (skip, children): (usize, usize) = match marker {
            0x00..=0x7f | 0xc0 | 0xc2 | 0xc3 | 0xe0..=0xff => (0, 0),
            0x80..=0x8f => (0, 2 * usize::from(marker & 0x0f)),
            0x90..=0x9f => (0, usize::from(marker & 0x0f)),
            0xa0..=0xbf => (usize::from(marker & 0x1f), 0),
            0xc1 => return Err(ReadError::Invalid("reserved byte 0xc1".into())),
            0xc4..=0xc6 => (self.len(1 << (marker - 0xc4))?, 0),
            0xc7..=0xc9 => (self.len(1 << (marker - 0xc7))? + 1, 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc..=0xcf => (1 << (marker - 0xcc), 0),
            0xd0..=0xd3 => (1 << (marker - 0xd0), 0),
            0xd4..=0xd8 => (1 + (1 << (marker - 0xd4)), 0),
            0xd9..=0xdb => (self.len(1 << (marker - 0xd9))?, 0),
            0xdc => (0, self.len(2)?),
            0xdd => (0, self.len(4)?),
            0xde => (0, 2 * self.len(2)?),
            0xdf => (0, 2usize.saturating_mul(self.len(4)?)),
        };
        self.take(skip)?;
        self.check_count(children)?;
        Ok(children)
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], ReadError> {
        let end = self.pos.checked_add(n).ok_or(ReadError::Truncated)?;
        let out = self.buf.get(self.pos..end).ok_or(ReadError::Truncated)?;
        self.pos = end;
        Ok(out)
    }

    fn be(&mut self, n: usize) -> std::result::Result<u64, ReadError> {
        Ok(self.take(n)?.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn len(&mut self, n: usize) -> std::result::Result<usize, ReadError> {
        usize::try_from(self.be(n)?).map_err(|_| ReadError::Truncated)
    }

    /// A container of `count` elements needs at least `count` more bytes.
    fn check_count(&self, count: usize) -> std::result::Result<(), ReadError> {
        if count > self.buf.len() - self.pos {
            return Err(ReadError::Truncated);
        }
        Ok(())
    }

    fn array(&mut self, count: usize, depth: usize) -> std::result::Result<Mp<'a>, ReadError> {
        self.check_count(count)?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(self.read(depth + 1)?);
        }
        Ok(Mp::Array(items))
    }

    fn map(&mut self, count: usize, depth: usize) -> std::result::Result<Mp<'a>, ReadError> {
        self.check_count(count.saturating_mul(2))?;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let k = self.read(depth + 1)?;
            let v = self.read(depth + 1)?;
            entries.push((k, v));
        }
        Ok(Mp::Map(entries))
    }

    /// `read`, building a `Node`: the same reads in the same order, so errors and positions agree.
    fn read_node(&mut self, depth: usize) -> std::result::Result<Node<'a>, ReadError> {
        if depth > MAX_DEPTH {
            return Err(ReadError::Invalid(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let marker = self.take(1)?[0];
        let text = |b: &'a [u8]| Node::Str(node::text(b));
        Ok(match marker {
            0x00..=0x7f => Node::UInt(u64::from(marker)),
            0x80..=0x8f => return self.node_map(usize::from(marker & 0x0f), depth),
            0x90..=0x9f => return self.node_array(usize::from(marker & 0x0f), depth),
            0xa0..=0xbf => text(self.take(usize::from(marker & 0x1f))?),
            0xc0 => Node::Null,
            0xc1 => return Err(ReadError::Invalid("reserved byte 0xc1".into())),
            0xc2 => Node::Bool(false),
            0xc3 => Node::Bool(true),
            0xc4..=0xc6 => {
                let n = self.len(1 << (marker - 0xc4))?;
                text(self.take(n)?)
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (marker - 0xc7))?;
                let ty = self.take(1)?[0] as i8;
                node::from_mp(&Mp::Ext(ty, self.take(n)?))
            }
            0xca => Node::float(f64::from(f32::from_bits(self.be(4)? as u32))),
            0xcb => Node::float(f64::from_bits(self.be(8)?)),
            0xcc..=0xcf => Node::UInt(self.be(1 << (marker - 0xcc))?),
            0xd0 => Node::int(i64::from(self.be(1)? as u8 as i8)),
            0xd1 => Node::int(i64::from(self.be(2)? as u16 as i16)),
            0xd2 => Node::int(i64::from(self.be(4)? as u32 as i32)),
            0xd3 => Node::int(self.be(8)? as i64),
            0xd4..=0xd8 => {
                let ty = self.take(1)?[0] as i8;
                node::from_mp(&Mp::Ext(ty, self.take(1 << (marker - 0xd4))?))
            }
            0xd9..=0xdb => {
                let n = self.len(1 << (marker - 0xd9))?;
                text(self.take(n)?)
            }
            0xdc | 0xdd => {
                let n = self.len(if marker == 0xdc { 2 } else { 4 })?;
                return self.node_array(n, depth);
            }
            0xde | 0xdf => {
                let n = self.len(if marker == 0xde { 2 } else { 4 })?;
                return self.node_map(n, depth);
            }
            0xe0..=0xff => Node::int(i64::from(marker as i8)),
        })
    }

    fn node_array(&mut self, count: usize, depth: usize) -> std::result::Result<Node<'a>, ReadError> {
        self.check_count(count)?;
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(self.read_node(depth + 1)?);
        }
        Ok(Node::Array(items))
    }

    /// Keys that are not text become their JSON text (as `node::from_mp` writes them).
    fn node_map(&mut self, count: usize, depth: usize) -> std::result::Result<Node<'a>, ReadError> {
        self.check_count(count.saturating_mul(2))?;
        let mut entries: Vec<Entry<'a>> = Vec::with_capacity(count);
        for _ in 0..count {
            let key = match self.read_node(depth + 1)? {
                Node::Str(s) => s,
                other => Cow::Owned(other.to_json()),
            };
            entries.push((key, self.read_node(depth + 1)?));
        }
        node::dedup(&mut entries);
        Ok(Node::Object(entries))
    }

    fn read(&mut self, depth: usize) -> std::result::Result<Mp<'a>, ReadError> {
        if depth > MAX_DEPTH {
            return Err(ReadError::Invalid(format!("nested deeper than {MAX_DEPTH} levels")));
        }
        let marker = self.take(1)?[0];
        Ok(match marker {
            0x00..=0x7f => Mp::UInt(u64::from(marker)),
            0x80..=0x8f => return self.map(usize::from(marker & 0x0f), depth),
            0x90..=0x9f => return self.array(usize::from(marker & 0x0f), depth),
            0xa0..=0xbf => Mp::Str(self.take(usize::from(marker & 0x1f))?),
            0xc0 => Mp::Nil,
            0xc1 => return Err(ReadError::Invalid("reserved byte 0xc1".into())),
            0xc2 => Mp::Bool(false),
            0xc3 => Mp::Bool(true),
            0xc4..=0xc6 => {
                let n = self.len(1 << (marker - 0xc4))?;
                Mp::Bin(self.take(n)?)
            }
            0xc7..=0xc9 => {
                let n = self.len(1 << (marker - 0xc7))?;
                let ty = self.take(1)?[0] as i8;
                Mp::Ext(ty, self.take(n)?)
            }
            0xca => Mp::Float(f64::from(f32::from_bits(self.be(4)? as u32))),
            0xcb => Mp::Float(f64::from_bits(self.be(8)?)),
            0xcc..=0xcf => Mp::UInt(self.be(1 << (marker - 0xcc))?),
            0xd0 => Mp::Int(i64::from(self.be(1)? as u8 as i8)),
            0xd1 => Mp::Int(i64::from(self.be(2)? as u16 as i16)),
            0xd2 => Mp::Int(i64::from(self.be(4)? as u32 as i32)),
            0xd3 => Mp::Int(self.be(8)? as i64),
            0xd4..=0xd8 => {
                let ty = self.take(1)?[0] as i8;
                Mp::Ext(ty, self.take(1 << (marker - 0xd4))?)
            }
            0xd9..=0xdb => {
                let n = self.len(1 << (marker - 0xd9))?;
                Mp::Str(self.take(n)?)
            }
            0xdc | 0xdd => {
                let n = self.len(if marker == 0xdc { 2 } else { 4 })?;
                return self.array(n, depth);
            }
            0xde | 0xdf => {
                let n = self.len(if marker == 0xde { 2 } else { 4 })?;
                return self.map(n, depth);
            }
            0xe0..=0xff => Mp::Int(i64::from(marker as i8)),
        })
    }
}

/// Writes the few values the forward protocol answers with (`{"ack": id}`, the handshake).
pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    match s.len() {
        n if n < 32 => out.push(0xa0 | n as u8),
        n if n < 256 => out.extend_from_slice(&[0xd9, n as u8]),
        n if n < 65_536 => {
            out.push(0xda);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0xdb);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(s);
}

/// A binary (the handshake's nonce and salt: random bytes, not UTF-8).
pub fn put_bin(out: &mut Vec<u8>, b: &[u8]) {
    match b.len() {
        n if n < 256 => out.extend_from_slice(&[0xc4, n as u8]),
        n if n < 65_536 => {
            out.push(0xc5);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0xc6);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(b);
}

/// The header of a map with `n` entries (n < 16 in what the gateway writes).
pub fn put_map_header(out: &mut Vec<u8>, n: usize) {
    debug_assert!(n < 16);
    out.push(0x80 | n as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_resumed_over_growing_prefixes_steps_over_each_byte_once() {
        // [ "tag", [ [1, {"k": "v"}], [2, {}] ], bin of 300 bytes ], then the next message.
        let mut value = vec![
            0x93, 0xa3, b't', b'a', b'g', 0x92, 0x92, 0x01, 0x81, 0xa1, b'k', 0xa1, b'v',
        ];
        value.extend_from_slice(&[0x92, 0x02, 0x80, 0xc5, 0x01, 0x2c]);
        value.extend_from_slice(&[7u8; 300]);
        let whole = value.len();
        let mut buf = value.clone();
        buf.extend_from_slice(&[0xc0]);
        let mut state = Skipping::default();
        let mut last = 0;
        for end in 1..whole {
            assert_eq!(Reader::skip_more(&buf[..end], &mut state), Err(ReadError::Truncated));
            assert!(state.pos >= last && state.pos <= end, "never back, never past the data");
            last = state.pos;
        }
        // Inside the 300-byte bin, it waits at the bin's start: its header is read again, its
        // bytes never are.
        assert_eq!(last, whole - 303);
        assert_eq!(Reader::skip_more(&buf[..whole], &mut state), Ok(()));
        assert_eq!(state.pos, whole);
        let mut r = Reader::new(&buf);
        assert_eq!(r.skip(), Ok(()));
        assert_eq!(r.position(), whole);
        // A reserved byte is an error, resumed or not.
        let mut state = Skipping::default();
        assert!(matches!(
            Reader::skip_more(&[0x92, 0x01], &mut state),
            Err(ReadError::Truncated)
        ));
        assert!(matches!(
            Reader::skip_more(&[0x92, 0x01, 0xc1], &mut state),
            Err(ReadError::Invalid(_))
        ));
    }

    fn one(bytes: &[u8]) -> Mp<'_> {
        let mut r = Reader::new(bytes);
        let v = r.value().unwrap();
        assert!(r.at_end());
        v
    }

    #[test]
    fn scalars() {
        assert_eq!(one(&[0x05]), Mp::UInt(5));
        assert_eq!(one(&[0xff]), Mp::Int(-1));
        assert_eq!(one(&[0xd0, 0x80]), Mp::Int(-128));
        assert_eq!(one(&[0xcd, 0x01, 0x00]), Mp::UInt(256));
        assert_eq!(
            one(&[0xd3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe]),
            Mp::Int(-2)
        );
        assert_eq!(one(&[0xc0]), Mp::Nil);
        assert_eq!(one(&[0xc3]), Mp::Bool(true));
        assert_eq!(one(&[0xa3, b'a', b'b', b'c']), Mp::Str(b"abc"));
        assert_eq!(one(&[0xc4, 0x02, 1, 2]), Mp::Bin(&[1, 2]));
        let mut f = vec![0xcb];
        f.extend_from_slice(&1.5f64.to_bits().to_be_bytes());
        assert_eq!(one(&f), Mp::Float(1.5));
        let mut f = vec![0xca];
        f.extend_from_slice(&2.5f32.to_bits().to_be_bytes());
        assert_eq!(one(&f), Mp::Float(2.5));
    }

    #[test]
    fn event_time_ext_and_containers() {
        let bytes = [0xd7, 0x00, 0, 0, 0, 1, 0, 0, 0, 2];
        assert_eq!(one(&bytes), Mp::Ext(0, &[0, 0, 0, 1, 0, 0, 0, 2]));
        let map = [0x81, 0xa1, b'k', 0x92, 0x01, 0xc0];
        let v = one(&map);
        assert_eq!(v.get("k"), Some(&Mp::Array(vec![Mp::UInt(1), Mp::Nil])));
        let map32 = [0xdf, 0, 0, 0, 1, 0xa1, b'k', 0x01];
        assert_eq!(one(&map32).get("k"), Some(&Mp::UInt(1)));
    }

    #[test]
    fn truncated_and_invalid() {
        assert_eq!(Reader::new(&[0xa3, b'a']).value(), Err(ReadError::Truncated));
        assert_eq!(
            Reader::new(&[0xdd, 0xff, 0xff, 0xff, 0xff]).value(),
            Err(ReadError::Truncated)
        );
        assert!(matches!(Reader::new(&[0xc1]).value(), Err(ReadError::Invalid(_))));
        let deep = vec![0x91; 200];
        assert!(matches!(Reader::new(&deep).value(), Err(ReadError::Invalid(_))));
    }

    #[test]
    fn skip_agrees_with_value() {
        let mut map = vec![0x82, 0xa1, b'k', 0xdc, 0, 2, 0xc0, 0xd7, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        map.extend_from_slice(&[0xa1, b'b', 0xc4, 2, 9, 9]);
        let mut r = Reader::new(&map);
        r.skip().unwrap();
        assert_eq!(r.position(), map.len());
        for cut in 0..map.len() {
            assert_eq!(Reader::new(&map[..cut]).skip(), Err(ReadError::Truncated), "{cut}");
            assert_eq!(Reader::new(&map[..cut]).value(), Err(ReadError::Truncated), "{cut}");
        }
    }

    #[test]
    fn writer_round_trip() {
        let mut out = Vec::new();
        put_map_header(&mut out, 1);
        put_str(&mut out, b"ack");
        put_str(&mut out, &[b'x'; 300]);
        let v = one(&out);
        assert_eq!(v.get("ack").and_then(Mp::as_str).map(<[u8]>::len), Some(300));
    }
}
