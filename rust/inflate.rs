//! gzip, zlib and raw deflate inflated straight into the caller's buffer with flate2's
//! `Decompress` (on zlib-rs): no `Read` adapter in between, so neither the input nor the output
//! is copied through an intermediate chunk. The gzip framing (RFC 1952: header, CRC-32 and size
//! trailer, concatenated members) is read here, with flate2's rules and messages.
//!
//! The output grows by doubling and never past `limit` + 1 bytes of new room: one byte past the
//! limit is how a body over it is told from one exactly at it.

use std::io;

use flate2::{Crc, Decompress, FlushDecompress, Status};

use crate::decompress::{reserve_initial, ReadError};

/// First room when nothing is known, as for the other decoders.
const MIN_ROOM: usize = 64 * 1024;
/// flate2's cap on a gzip header's name or comment: the same bodies pass and fail as before.
const MAX_HEADER_FIELD: usize = 65535;

const FHCRC: u8 = 1 << 1;
const FEXTRA: u8 = 1 << 2;
const FNAME: u8 = 1 << 3;
const FCOMMENT: u8 = 1 << 4;
const FRESERVED: u8 = 0xe0;

/// One zlib (`zlib_header`) or raw deflate stream into `out`; bytes after the stream's end are
/// ignored, as flate2's readers ignore them.
pub(crate) fn stream(body: &[u8], zlib_header: bool, limit: usize, out: &mut Vec<u8>) -> Result<(), ReadError> {
    reserve_initial(out, body.len(), limit);
    inflate(&mut Decompress::new(zlib_header), body, limit, out).map(|_| ())
}

/// Every member of a gzip body into `out`, each checked against its trailer. Anything after a
/// member that is not another member is an error, as in flate2's `MultiGzDecoder`.
pub(crate) fn gzip(body: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), ReadError> {
    reserve_initial(out, body.len(), limit);
    let mut decoder = Decompress::new(false);
    let mut rest = body;
    loop {
        rest = &rest[header_len(rest)?..];
        let start = out.len();
        decoder.reset(false);
        rest = &rest[inflate(&mut decoder, rest, limit, out)?..];
        let Some((trailer, after)) = rest.split_first_chunk::<8>() else {
            return Err(eof());
        };
        let mut crc = Crc::new();
        crc.update(&out[start..]);
        let (want_crc, want_len) = trailer.split_at(4);
        // ISIZE is the member's length modulo 2^32.
        if want_crc != crc.sum().to_le_bytes() || want_len != crc.amount().to_le_bytes() {
            return Err(invalid("corrupt gzip stream does not have a matching checksum"));
        }
        if after.is_empty() {
            return Ok(());
        }
        rest = after;
    }
}

/// Inflates the deflate stream at the start of `input` onto the end of `out`; returns how many
/// bytes of `input` it took.
fn inflate(decoder: &mut Decompress, input: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<usize, ReadError> {
    let start = decoder.total_in();
    loop {
        let used = (decoder.total_in() - start) as usize;
        let written = out.len();
        let status = decoder
            .decompress_vec(&input[used..], out, FlushDecompress::None)
            .map_err(|e| ReadError::Io(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
        if out.len() > limit {
            return Err(ReadError::TooLarge);
        }
        let used_now = (decoder.total_in() - start) as usize;
        if status == Status::StreamEnd {
            return Ok(used_now);
        }
        if out.len() == out.capacity() {
            // Double, but at most to one byte past the limit (`Vec`'s own growth could reserve 2x it).
            let room = out
                .capacity()
                .saturating_mul(2)
                .max(MIN_ROOM)
                .min(limit.saturating_add(1));
            out.reserve_exact(room - out.len());
        } else if used_now == input.len() {
            return Err(eof());
        } else if used_now == used && out.len() == written {
            return Err(invalid("corrupt deflate stream"));
        }
    }
}

/// Length of the gzip member header at the start of `body`.
fn header_len(body: &[u8]) -> Result<usize, ReadError> {
    let Some(fixed) = body.get(..10) else {
        return Err(eof());
    };
    let flags = fixed[3];
    if fixed[..3] != [0x1f, 0x8b, 8] || flags & FRESERVED != 0 {
        return Err(invalid("invalid gzip header"));
    }
    let mut pos = 10;
    if flags & FEXTRA != 0 {
        let Some(&[lo, hi]) = body.get(pos..pos + 2) else {
            return Err(eof());
        };
        pos += 2 + usize::from(u16::from_le_bytes([lo, hi]));
    }
    for flag in [FNAME, FCOMMENT] {
        if flags & flag != 0 {
            let field = body.get(pos..).ok_or_else(eof)?;
            let window = &field[..field.len().min(MAX_HEADER_FIELD + 1)];
            match window.iter().position(|&b| b == 0) {
                Some(n) => pos += n + 1,
                None if window.len() > MAX_HEADER_FIELD => return Err(invalid("gzip header field too long")),
                None => return Err(eof()),
            }
        }
    }
    if flags & FHCRC != 0 {
        let header = body.get(..pos).ok_or_else(eof)?;
        let Some(&[lo, hi]) = body.get(pos..pos + 2) else {
            return Err(eof());
        };
        let mut crc = Crc::new();
        crc.update(header);
        if u16::from_le_bytes([lo, hi]) != crc.sum() as u16 {
            return Err(invalid("corrupt gzip stream does not have a matching checksum"));
        }
        pos += 2;
    }
    if pos > body.len() {
        return Err(eof());
    }
    Ok(pos)
}

fn eof() -> ReadError {
    ReadError::Io(io::ErrorKind::UnexpectedEof.into())
}

fn invalid(message: &'static str) -> ReadError {
    ReadError::Io(io::Error::new(io::ErrorKind::InvalidInput, message))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::write::{GzEncoder, ZlibEncoder};
    use flate2::Compression;

    use super::*;

    fn gzip_of(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::new(3));
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn body(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    fn is_io(r: Result<(), ReadError>, what: &str) -> bool {
        matches!(r, Err(ReadError::Io(e)) if e.to_string().contains(what))
    }

    #[test]
    fn appends_and_reuses_the_room_it_has() {
        // A buffer sized by an earlier, larger body is filled in place: no new allocation.
        let mut out = Vec::with_capacity(1 << 20);
        let ptr = out.as_ptr();
        gzip(&gzip_of(&body(300_000)), 1 << 20, &mut out).ok().unwrap();
        assert_eq!(out, body(300_000));
        assert_eq!((out.as_ptr(), out.capacity()), (ptr, 1 << 20));
        // A larger body than the room: grown by doubling, never past the limit + 1.
        let mut out = Vec::with_capacity(1000);
        gzip(&gzip_of(&body(900_000)), 900_000, &mut out).ok().unwrap();
        assert_eq!(out, body(900_000));
        assert!(out.capacity() <= 900_001, "{}", out.capacity());
    }

    #[test]
    fn every_member_and_its_checksum() {
        let mut two = gzip_of(b"hello ");
        two.extend(gzip_of(b"world"));
        let mut out = Vec::new();
        gzip(&two, 100, &mut out).ok().unwrap();
        assert_eq!(out, b"hello world");
        // A flipped CRC byte, a wrong size, garbage after a member, a member cut short.
        let good = gzip_of(&body(5000));
        for (at, what) in [(good.len() - 8, "checksum"), (good.len() - 4, "checksum")] {
            let mut bad = good.clone();
            bad[at] ^= 1;
            assert!(is_io(gzip(&bad, 1 << 20, &mut Vec::new()), what), "{at}");
        }
        let mut trailing = good.clone();
        trailing.extend(b"junk after it");
        assert!(is_io(gzip(&trailing, 1 << 20, &mut Vec::new()), "invalid gzip header"));
        for cut in [5, 11, good.len() / 2, good.len() - 3] {
            assert!(
                matches!(gzip(&good[..cut], 1 << 20, &mut Vec::new()), Err(ReadError::Io(_))),
                "{cut}"
            );
        }
    }

    #[test]
    fn header_fields_are_skipped_and_checked() {
        let payload = flate2::write::DeflateEncoder::new(Vec::new(), Compression::fast());
        let mut payload = payload;
        payload.write_all(b"x").unwrap();
        let deflated = payload.finish().unwrap();
        let member = |flags: u8, fields: &[u8]| {
            let mut gz = vec![0x1f, 0x8b, 8, flags, 0, 0, 0, 0, 0, 255];
            gz.extend_from_slice(fields);
            if flags & FHCRC != 0 {
                let mut crc = Crc::new();
                crc.update(&gz);
                gz.extend_from_slice(&(crc.sum() as u16).to_le_bytes());
            }
            gz.extend_from_slice(&deflated);
            let mut crc = Crc::new();
            crc.update(b"x");
            gz.extend(crc.sum().to_le_bytes());
            gz.extend(1u32.to_le_bytes());
            gz
        };
        let all = FEXTRA | FNAME | FCOMMENT | FHCRC;
        let fields = b"\x03\x00abcname\0comment\0";
        let mut out = Vec::new();
        gzip(&member(all, fields), 16, &mut out).ok().unwrap();
        assert_eq!(out, b"x");
        let mut bad_hcrc = member(all, fields);
        bad_hcrc[10 + fields.len()] ^= 1;
        assert!(is_io(gzip(&bad_hcrc, 16, &mut Vec::new()), "checksum"));
        assert!(is_io(
            gzip(&member(0x20, b""), 16, &mut Vec::new()),
            "invalid gzip header"
        ));
        let long_name = [vec![b'a'; MAX_HEADER_FIELD], vec![0]].concat();
        gzip(&member(FNAME, &long_name), 16, &mut Vec::new()).ok().unwrap();
        let too_long = [vec![b'a'; MAX_HEADER_FIELD + 1], vec![0]].concat();
        assert!(is_io(gzip(&member(FNAME, &too_long), 16, &mut Vec::new()), "too long"));
    }

    #[test]
    fn bombs_stop_one_byte_past_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        for limit in [0, 1, 4096, 1 << 20] {
            let mut out = Vec::new();
            assert!(matches!(
                gzip(&gzip_of(&zeros), limit, &mut out),
                Err(ReadError::TooLarge)
            ));
            assert!(
                out.capacity() <= (limit + 1).max(MIN_ROOM).max(4 * 10_000),
                "{}",
                out.capacity()
            );
            let mut zlib = ZlibEncoder::new(Vec::new(), Compression::new(3));
            zlib.write_all(&zeros).unwrap();
            let mut out = Vec::new();
            assert!(matches!(
                stream(&zlib.finish().unwrap(), true, limit, &mut out),
                Err(ReadError::TooLarge)
            ));
        }
        // Exactly at the limit passes, including an empty body under a zero limit.
        let mut out = Vec::new();
        gzip(&gzip_of(&body(70_000)), 70_000, &mut out).ok().unwrap();
        assert_eq!(out.len(), 70_000);
        gzip(&gzip_of(b""), 0, &mut Vec::new()).ok().unwrap();
    }
}
