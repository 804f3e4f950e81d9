//! The Fluentd Forward Protocol v1 (what Fluent Bit's `forward` output sends over TCP): framing
//! and the four modes, independent of the network. The mode is told by the type of the second
//! element of each message array:
//!
//! - Message: `[tag, time, record, option?]`
//! - Forward: `[tag, [[time, record], ...], option?]`
//! - PackedForward: `[tag, <bin/str holding entries back to back>, option?]`
//! - CompressedPackedForward: the same with `{"compressed": "gzip"}` in the option.
//!
//! Entries are `[time, record]` or (Fluent Bit ≥ 5.0.5) `[[time, metadata], record]`.

use crate::decompress::decompress;
use crate::error::{quote, CoreError, Result};

use super::msgpack::{self, Mp, ReadError, Reader};
use super::{entry, read_entry, LogsBuilder};

/// One message from the stream, decoded and converted.
#[derive(Debug)]
pub struct Message {
    pub tag: String,
    /// The `chunk` option: answered with `{"ack": chunk}` once the entries are queued.
    pub chunk: Option<String>,
    pub builder: LogsBuilder,
    /// Bytes the message took on the wire (for the counters).
    pub wire_bytes: usize,
}

/// What the next bytes of a stream hold.
// Returned once per message and matched at once: boxing `Message` would cost an allocation per
// message to save a move.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Frame {
    /// Not a whole value yet: read more (the caller bounds how much).
    Incomplete,
    /// `nil`: a heartbeat; `n` bytes consumed.
    Heartbeat(usize),
    Message(Message),
}

/// Decodes the first message of `buf`. `max_bytes` bounds what a compressed chunk may inflate to.
/// Errors are malformed frames: the caller closes the connection.
pub fn next_frame(buf: &[u8], max_bytes: usize, observed: u64) -> Result<Frame> {
    let mut reader = Reader::new(buf);
    let value = match reader.value() {
        Ok(v) => v,
        Err(ReadError::Truncated) => return Ok(Frame::Incomplete),
        Err(e) => return Err(e.into()),
    };
    let used = reader.position();
    if value == Mp::Nil {
        return Ok(Frame::Heartbeat(used));
    }
    let Mp::Array(items) = &value else {
        return Err(CoreError::decode("forward message is not an array"));
    };
    if !(2..=4).contains(&items.len()) {
        return Err(CoreError::decode(format!(
            "forward message has {} elements (expected 2 to 4)",
            items.len()
        )));
    }
    let tag = match &items[0] {
        Mp::Str(s) => String::from_utf8_lossy(s).into_owned(),
        _ => return Err(CoreError::decode("forward message tag is not a string")),
    };
    let mut builder = LogsBuilder::new(&tag, observed);
    let option = match &items[1] {
        // Message mode: [tag, time, record, option?]
        Mp::Ext(..) | Mp::UInt(_) | Mp::Int(_) | Mp::Float(_) => {
            if items.len() < 3 {
                return Err(CoreError::decode("forward Message mode without a record"));
            }
            let pair = Mp::Array(vec![items[1].clone(), items[2].clone()]);
            add(&mut builder, &pair, 0);
            items.get(3)
        }
        // Forward mode: [tag, [entries], option?]
        Mp::Array(entries) => {
            for (i, e) in entries.iter().enumerate() {
                add(&mut builder, e, i);
            }
            items.get(2)
        }
        // PackedForward / CompressedPackedForward: [tag, bin, option?]
        Mp::Bin(packed) | Mp::Str(packed) => {
            let option = items.get(2);
            let compressed = option
                .and_then(|o| o.get("compressed"))
                .and_then(Mp::as_str)
                .map(|c| String::from_utf8_lossy(c).into_owned());
            let inflated = match compressed.as_deref() {
                None | Some("text") => decompress(packed, None, max_bytes)?,
                Some("gzip") => decompress(packed, Some("gzip"), max_bytes)?,
                Some(other) => {
                    return Err(CoreError::Unsupported(format!(
                        "forward compression {} (supported: gzip)",
                        quote(other.as_bytes())
                    )))
                }
            };
            let mut entries = Reader::new(&inflated);
            let mut i = 0;
            while !entries.at_end() {
                let event = read_entry(&mut entries).map_err(|e| {
                    let e: CoreError = e.into();
                    CoreError::decode(format!("PackedForward entry {i}: {e}"))
                })?;
                match event {
                    Ok(event) => builder.add(event),
                    Err(why) => builder.reject(format!("entry {i} {why}")),
                }
                i += 1;
            }
            option
        }
        _ => {
            return Err(CoreError::decode(
                "forward message: second element is not a time, array or binary",
            ))
        }
    };
    let chunk = match option {
        None | Some(Mp::Nil) => None,
        Some(o @ Mp::Map(_)) => o
            .get("chunk")
            .and_then(Mp::as_str)
            .map(|c| String::from_utf8_lossy(c).into_owned()),
        Some(_) => return Err(CoreError::decode("forward message option is not a map")),
    };
    Ok(Frame::Message(Message {
        tag,
        chunk,
        builder,
        wire_bytes: used,
    }))
}

fn add(builder: &mut LogsBuilder, e: &Mp<'_>, i: usize) {
    match entry(e) {
        Ok(event) => builder.add(event),
        Err(why) => builder.reject(format!("entry {i} {why}")),
    }
}

/// `{"ack": chunk}`.
pub fn ack(chunk: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(chunk.len() + 8);
    msgpack::put_map_header(&mut out, 1);
    msgpack::put_str(&mut out, b"ack");
    msgpack::put_str(&mut out, chunk.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn s(out: &mut Vec<u8>, text: &str) {
        msgpack::put_str(out, text.as_bytes());
    }

    fn time(out: &mut Vec<u8>, secs: u32) {
        out.extend_from_slice(&[0xd7, 0x00]);
        out.extend_from_slice(&secs.to_be_bytes());
        out.extend_from_slice(&7u32.to_be_bytes());
    }

    fn record(out: &mut Vec<u8>, log: &str) {
        out.push(0x81);
        s(out, "log");
        s(out, log);
    }

    fn entry_bytes(out: &mut Vec<u8>, secs: u32, log: &str, with_metadata: bool) {
        out.push(0x92);
        if with_metadata {
            out.push(0x92);
            time(out, secs);
            out.push(0x80);
        } else {
            time(out, secs);
        }
        record(out, log);
    }

    fn chunk_option(out: &mut Vec<u8>, chunk: &str, compressed: bool) {
        // map32, as Fluent Bit writes even tiny option maps
        out.extend_from_slice(&[0xdf, 0, 0, 0, if compressed { 2 } else { 1 }]);
        s(out, "chunk");
        s(out, chunk);
        if compressed {
            s(out, "compressed");
            s(out, "gzip");
        }
    }

    fn message(frame: Frame) -> Message {
        match frame {
            Frame::Message(m) => m,
            other => panic!("not a message: {other:?}"),
        }
    }

    #[test]
    fn message_mode() {
        let mut b = vec![0x94];
        s(&mut b, "app");
        time(&mut b, 100);
        record(&mut b, "hello");
        chunk_option(&mut b, "c1", false);
        let m = message(next_frame(&b, 1 << 20, 1).unwrap());
        assert_eq!(
            (m.tag.as_str(), m.chunk.as_deref(), m.wire_bytes),
            ("app", Some("c1"), b.len())
        );
        let c = m.builder.finish();
        assert_eq!((c.records, c.rejected), (1, 0));
        for cut in 1..b.len() {
            assert!(
                matches!(next_frame(&b[..cut], 1 << 20, 1).unwrap(), Frame::Incomplete),
                "{cut}"
            );
        }
    }

    #[test]
    fn forward_mode_both_entry_shapes() {
        let mut b = vec![0x92];
        s(&mut b, "app");
        b.push(0x93);
        entry_bytes(&mut b, 1, "a", false);
        entry_bytes(&mut b, 2, "b", true);
        b.extend_from_slice(&[0x92, 0x01, 0x02]);
        let m = message(next_frame(&b, 1 << 20, 1).unwrap());
        assert_eq!(m.chunk, None);
        let c = m.builder.finish();
        assert_eq!((c.records, c.rejected), (2, 1));
    }

    #[test]
    fn packed_and_compressed_packed() {
        let mut entries = Vec::new();
        for i in 0..5 {
            entry_bytes(&mut entries, i + 1, &format!("e{i}"), i % 2 == 0);
        }
        for compressed in [false, true] {
            let payload = if compressed {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&entries).unwrap();
                gz.finish().unwrap()
            } else {
                entries.clone()
            };
            let mut b = vec![0x93];
            s(&mut b, "packed");
            b.push(0xc6);
            b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            b.extend_from_slice(&payload);
            chunk_option(&mut b, "xyz", compressed);
            let m = message(next_frame(&b, 1 << 20, 1).unwrap());
            assert_eq!(m.chunk.as_deref(), Some("xyz"));
            assert_eq!(m.builder.finish().records, 5);
        }
    }

    #[test]
    fn heartbeat_and_malformed() {
        assert!(matches!(next_frame(&[0xc0, 0x90], 10, 1).unwrap(), Frame::Heartbeat(1)));
        assert!(next_frame(&[0x01], 10, 1).is_err());
        assert!(next_frame(&[0x91, 0xa1, b'x'], 10, 1).is_err());
        assert!(next_frame(&[0x92, 0x01, 0x01], 10, 1).is_err());
        let mut b = vec![0x92];
        s(&mut b, "t");
        b.push(0xc0);
        assert!(next_frame(&b, 10, 1).is_err());
    }

    #[test]
    fn compressed_chunk_is_bounded() {
        let mut entries = Vec::new();
        for i in 0..200 {
            entry_bytes(&mut entries, 1, &"x".repeat(50 + i % 3), false);
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&entries).unwrap();
        let payload = gz.finish().unwrap();
        let mut b = vec![0x93];
        s(&mut b, "t");
        b.push(0xc6);
        b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        b.extend_from_slice(&payload);
        chunk_option(&mut b, "c", true);
        assert!(matches!(next_frame(&b, 1000, 1), Err(CoreError::TooLarge { .. })));
    }

    #[test]
    fn ack_is_a_map() {
        let a = ack("abc");
        let v = Reader::new(&a).value().unwrap();
        assert_eq!(v.get("ack"), Some(&Mp::Str(b"abc")));
    }
}
