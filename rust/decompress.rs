//! Content-Encoding: gzip (x-gzip), deflate (zlib, or raw deflate as some clients send), zstd, br
//! (sentry-sdk sends brotli when it is installed), identity.
//!
//! The limit is enforced while inflating: output is read in fixed chunks and the buffer never grows
//! past `limit`, so a decompression bomb costs at most `limit` plus one chunk (plus, for zstd, the
//! decoder's window, capped below).

use std::borrow::Cow;
use std::io::{self, Read};

use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};

use crate::error::{quote, CoreError, Result};

/// Bytes read from a decoder per call; also the most the output can overshoot `limit` in memory.
const CHUNK: usize = 32 * 1024;
/// First allocation when nothing better is known; grown by doubling, never past `limit`.
const MIN_INITIAL: usize = 64 * 1024;
/// zstd window bounds (log2). A frame may declare a window up to 2^27 (the library default); we cap it
/// by the limit, but never below 2^23 so every non-"ultra" compression level still decodes.
const ZSTD_WINDOW_LOG_MIN: u32 = 23;
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

const SUPPORTED: &str = "supported: gzip, deflate, zstd, br, identity";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    Deflate,
    Zstd,
    Brotli,
}

impl Encoding {
    fn parse(name: Option<&str>) -> Result<Self> {
        let Some(raw) = name else { return Ok(Encoding::Identity) };
        let name = raw.trim();
        let known = [
            ("", Encoding::Identity),
            ("identity", Encoding::Identity),
            ("gzip", Encoding::Gzip),
            ("x-gzip", Encoding::Gzip),
            ("deflate", Encoding::Deflate),
            ("zstd", Encoding::Zstd),
            ("br", Encoding::Brotli),
        ];
        known
            .iter()
            .find(|(known, _)| name.eq_ignore_ascii_case(known))
            .map(|&(_, encoding)| encoding)
            .ok_or_else(|| {
                // Echo a hostile 64 KiB header back as a short prefix only.
                CoreError::Unsupported(format!(
                    "unsupported Content-Encoding {} ({SUPPORTED})",
                    quote(name.as_bytes())
                ))
            })
    }

    fn label(self) -> &'static str {
        match self {
            Encoding::Identity => "identity",
            Encoding::Gzip => "gzip",
            Encoding::Deflate => "deflate",
            Encoding::Zstd => "zstd",
            Encoding::Brotli => "br",
        }
    }
}

/// Decodes `body` per its Content-Encoding. Identity bodies are borrowed, never copied.
///
/// Errors: `TooLarge { limit }` as soon as the output would pass `limit`; `Decode` for corrupt data;
/// `Unsupported` for any other encoding, including lists such as `"gzip, zstd"`.
pub fn decompress<'a>(body: &'a [u8], encoding: Option<&str>, limit: usize) -> Result<Cow<'a, [u8]>> {
    let encoding = Encoding::parse(encoding)?;
    if encoding == Encoding::Identity {
        if body.len() > limit {
            return Err(CoreError::TooLarge { limit });
        }
        return Ok(Cow::Borrowed(body));
    }
    // Some clients set Content-Encoding on an empty body; there is nothing to inflate.
    if body.is_empty() {
        return Ok(Cow::Borrowed(body));
    }
    let mut out = Vec::new();
    decompress_into(body, encoding, limit, &mut out)?;
    Ok(Cow::Owned(out))
}

/// `decompress` of an encoded body into `out` (cleared first; its capacity, at most `limit` + 1,
/// is used as it is and grown by doubling, never past `limit` + 1). For a caller that reuses one
/// buffer across requests: `with_decompressed`.
fn decompress_into(body: &[u8], encoding: Encoding, limit: usize, out: &mut Vec<u8>) -> Result<()> {
    out.clear();
    let done = match encoding {
        Encoding::Gzip => crate::inflate::gzip(body, limit, out),
        Encoding::Deflate if looks_like_zlib(body) => match crate::inflate::stream(body, true, limit, out) {
            // A raw stream can start with two bytes that pass the zlib header check by chance
            // (what the zlib attempt wrote before failing is not part of it).
            Err(ReadError::Io(_)) => {
                out.clear();
                crate::inflate::stream(body, false, limit, out)
            }
            other => other,
        },
        Encoding::Deflate => crate::inflate::stream(body, false, limit, out),
        Encoding::Zstd => zstd_decoder(body, limit).and_then(|d| read_bounded(d, body.len(), limit, out)),
        Encoding::Brotli => read_bounded(
            brotli_decompressor::Decompressor::new(body, CHUNK),
            body.len(),
            limit,
            out,
        ),
        Encoding::Identity => {
            if body.len() > limit {
                return Err(CoreError::TooLarge { limit });
            }
            out.extend_from_slice(body);
            Ok(())
        }
    };
    match done {
        Ok(()) => Ok(()),
        Err(ReadError::TooLarge) => Err(CoreError::TooLarge { limit }),
        Err(ReadError::Io(err)) => Err(CoreError::decode(format!("invalid {} data: {err}", encoding.label()))),
    }
}

/// Kept between requests by each thread that decodes bodies; a buffer grown past this by one big
/// request is given back rather than held for the thread's life.
const SCRATCH_KEEP_MAX: usize = 8 * 1024 * 1024;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on `body` decoded per its Content-Encoding, as `decompress` does (same errors), but
/// inflating into this thread's scratch buffer: sized by the requests before, so a steady stream
/// of similar bodies neither allocates nor grows a buffer per request. Identity bodies are passed
/// as they are. `f` must not keep the bytes (copy what it needs).
pub fn with_decompressed<T>(
    body: &[u8],
    encoding: Option<&str>,
    limit: usize,
    f: impl FnOnce(&[u8]) -> Result<T>,
) -> Result<T> {
    let encoding = Encoding::parse(encoding)?;
    if encoding == Encoding::Identity || body.is_empty() {
        if body.len() > limit {
            return Err(CoreError::TooLarge { limit });
        }
        return f(body);
    }
    SCRATCH.with(|cell| {
        // A nested call on this thread (none today) gets a buffer of its own.
        let Ok(mut scratch) = cell.try_borrow_mut() else {
            let mut out = Vec::new();
            decompress_into(body, encoding, limit, &mut out)?;
            return f(&out);
        };
        // Room past `limit` + 1 would let a decoder run on past the limit into a corrupt part
        // and answer "invalid" where a fresh buffer answers "too large": start again instead.
        if scratch.capacity() > limit.saturating_add(1) {
            *scratch = Vec::new();
        }
        let done = decompress_into(body, encoding, limit, &mut scratch).and_then(|()| f(&scratch));
        scratch.clear();
        if scratch.capacity() > SCRATCH_KEEP_MAX {
            *scratch = Vec::new();
        }
        done
    })
}

/// What decoding the start of a body yields, up to its first newline (see `first_line`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FirstLine<'a> {
    /// The first line, without its newline; `ended` says whether a newline ended it (else it is
    /// the whole decoded body).
    Line { line: Cow<'a, [u8]>, ended: bool },
    /// The line is longer than the limit (found without decoding further).
    TooLong,
    /// The prefix decodes to less than a line: read more of the body.
    Incomplete,
}

/// Decodes `prefix` (the body received so far; `complete` when that is all of it) only as far as
/// its first newline, at most `line_limit` bytes of output, so a request can be checked by its
/// first line before the rest is read or inflated. `body_limit` is the whole body's limit
/// (it bounds the zstd window, as in `decompress`).
///
/// Errors: `Unsupported` for an unknown encoding; `Decode` for corrupt data in a complete body (in
/// an incomplete one a decoder error may be the cut, so the answer is `Incomplete`).
pub fn first_line<'a>(
    prefix: &'a [u8],
    encoding: Option<&str>,
    complete: bool,
    line_limit: usize,
    body_limit: usize,
) -> Result<FirstLine<'a>> {
    let encoding = Encoding::parse(encoding)?;
    if encoding == Encoding::Identity || prefix.is_empty() {
        let window = &prefix[..prefix.len().min(line_limit.saturating_add(1))];
        return Ok(match window.iter().position(|&b| b == b'\n') {
            Some(n) => FirstLine::Line {
                line: Cow::Borrowed(&prefix[..n]),
                ended: true,
            },
            None if window.len() > line_limit => FirstLine::TooLong,
            None if complete => FirstLine::Line {
                line: Cow::Borrowed(prefix),
                ended: false,
            },
            None => FirstLine::Incomplete,
        });
    }
    let reader: Box<dyn Read + '_> = match encoding {
        Encoding::Gzip => Box::new(MultiGzDecoder::new(prefix)),
        Encoding::Deflate if looks_like_zlib(prefix) => Box::new(ZlibDecoder::new(prefix)),
        Encoding::Deflate => Box::new(DeflateDecoder::new(prefix)),
        Encoding::Zstd => match zstd_decoder(prefix, body_limit) {
            Ok(decoder) => Box::new(decoder),
            Err(_) if !complete => return Ok(FirstLine::Incomplete),
            Err(ReadError::Io(err)) => return Err(CoreError::decode(format!("invalid zstd data: {err}"))),
            Err(ReadError::TooLarge) => return Err(CoreError::TooLarge { limit: body_limit }),
        },
        Encoding::Brotli => Box::new(brotli_decompressor::Decompressor::new(prefix, CHUNK)),
        Encoding::Identity => unreachable!("handled above"),
    };
    match read_line(reader, line_limit) {
        // A zlib-looking header can be a raw stream's first bytes by chance (as in `decompress`).
        Err(_) if encoding == Encoding::Deflate && looks_like_zlib(prefix) => {
            match read_line(DeflateDecoder::new(prefix), line_limit) {
                Ok(found) => Ok(line_or_more(found, complete)),
                Err(_) if !complete => Ok(FirstLine::Incomplete),
                Err(err) => Err(CoreError::decode(format!("invalid deflate data: {err}"))),
            }
        }
        Ok(found) => Ok(line_or_more(found, complete)),
        Err(_) if !complete => Ok(FirstLine::Incomplete),
        Err(err) => Err(CoreError::decode(format!("invalid {} data: {err}", encoding.label()))),
    }
}

/// What `read_line` found: a line ended by a newline, one over the limit, or the end of the output.
enum LineRead {
    Ended(Vec<u8>),
    TooLong,
    End(Vec<u8>),
}

fn line_or_more(found: LineRead, complete: bool) -> FirstLine<'static> {
    match found {
        LineRead::Ended(line) => FirstLine::Line {
            line: Cow::Owned(line),
            ended: true,
        },
        LineRead::TooLong => FirstLine::TooLong,
        LineRead::End(line) if complete => FirstLine::Line {
            line: Cow::Owned(line),
            ended: false,
        },
        LineRead::End(_) => FirstLine::Incomplete,
    }
}

/// Reads `reader` up to its first newline, never holding more than `limit` + one small chunk.
fn read_line(mut reader: impl Read, limit: usize) -> io::Result<LineRead> {
    // Small reads: the decoder stops soon after the newline instead of a whole chunk later.
    let mut chunk = [0u8; 4096];
    let mut line = Vec::new();
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(LineRead::End(line)),
            Ok(n) => n.min(chunk.len()),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err),
        };
        let data = &chunk[..n];
        let end = data.iter().position(|&b| b == b'\n');
        line.extend_from_slice(&data[..end.unwrap_or(n)]);
        if line.len() > limit {
            return Ok(LineRead::TooLong);
        }
        if end.is_some() {
            return Ok(LineRead::Ended(line));
        }
    }
}

pub(crate) enum ReadError {
    TooLarge,
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(err: io::Error) -> Self {
        ReadError::Io(err)
    }
}

/// RFC 1950 header: compression method 8, window ≤ 32 KiB, header checksum a multiple of 31.
fn looks_like_zlib(body: &[u8]) -> bool {
    match body {
        [cmf, flg, ..] => cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

fn zstd_decoder(body: &[u8], limit: usize) -> std::result::Result<impl Read + '_, ReadError> {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(body)?;
    // The decoder allocates the window a frame declares; a window wider than the limit is never needed
    // to produce `limit` bytes, so cap it (within the bounds above) to keep tiny frames from costing 128 MiB.
    let needed = usize::BITS - limit.max(1).saturating_sub(1).leading_zeros();
    decoder.window_log_max(needed.clamp(ZSTD_WINDOW_LOG_MIN, ZSTD_WINDOW_LOG_MAX))?;
    Ok(decoder)
}

/// Room for the first output of a body `compressed_len` long: compressed telemetry typically
/// inflates 5-10x; start at 4x (or what `out` holds already) but never above the limit.
pub(crate) fn reserve_initial(out: &mut Vec<u8>, compressed_len: usize, limit: usize) {
    let initial = compressed_len.saturating_mul(4).max(MIN_INITIAL).min(limit);
    if out.capacity() < initial {
        out.reserve_exact(initial - out.len());
    }
}

/// Reads `reader` to the end into `out` in chunks, failing as soon as the output would exceed `limit`.
fn read_bounded(
    mut reader: impl Read,
    compressed_len: usize,
    limit: usize,
    out: &mut Vec<u8>,
) -> std::result::Result<(), ReadError> {
    let mut chunk = [0u8; CHUNK];
    reserve_initial(out, compressed_len, limit);
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(ReadError::Io(err)),
        };
        let Some(data) = chunk.get(..n) else {
            return Err(ReadError::Io(io::Error::other(
                "decoder reported more bytes than it was given room for",
            )));
        };
        if out.len().saturating_add(n) > limit {
            return Err(ReadError::TooLarge);
        }
        if out.capacity() - out.len() < n {
            // Double, but never past the limit: `Vec`'s own growth could reserve up to 2x the limit.
            let target = out.capacity().saturating_mul(2).max(out.len() + n).min(limit);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(data);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;

    use super::*;

    fn sample_body() -> Vec<u8> {
        (0..50_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut enc = ZlibEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn raw_deflate(data: &[u8]) -> Vec<u8> {
        let mut enc = DeflateEncoder::new(Vec::new(), Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    const MIB: usize = 1024 * 1024;

    #[test]
    fn identity_is_borrowed() {
        let body = sample_body();
        for enc in [None, Some(""), Some("identity"), Some("IDENTITY"), Some(" identity ")] {
            let out = decompress(&body, enc, MIB).unwrap();
            assert!(matches!(out, Cow::Borrowed(_)), "{enc:?}");
            assert_eq!(&*out, &body[..]);
        }
    }

    #[test]
    fn identity_over_limit() {
        let body = vec![1u8; 100];
        assert_eq!(decompress(&body, None, 99), Err(CoreError::TooLarge { limit: 99 }));
        assert_eq!(decompress(&body, Some("identity"), 100).unwrap().len(), 100);
    }

    #[test]
    fn gzip_and_x_gzip_any_case() {
        let body = sample_body();
        let compressed = gzip(&body);
        for enc in ["gzip", "x-gzip", "GZIP", "X-Gzip", "gzip "] {
            assert_eq!(&*decompress(&compressed, Some(enc), MIB).unwrap(), &body[..], "{enc}");
        }
    }

    #[test]
    fn concatenated_gzip_members() {
        let mut compressed = gzip(b"hello ");
        compressed.extend(gzip(b"world"));
        assert_eq!(&*decompress(&compressed, Some("gzip"), MIB).unwrap(), b"hello world");
    }

    #[test]
    fn deflate_zlib_and_raw() {
        let body = sample_body();
        for (label, compressed) in [("zlib", zlib(&body)), ("raw", raw_deflate(&body))] {
            for enc in ["deflate", "Deflate", "DEFLATE"] {
                assert_eq!(
                    &*decompress(&compressed, Some(enc), MIB).unwrap(),
                    &body[..],
                    "{label} {enc}"
                );
            }
        }
    }

    #[test]
    fn zstd_round_trip() {
        let body = sample_body();
        let compressed = zstd::stream::encode_all(&body[..], 3).unwrap();
        for enc in ["zstd", "ZSTD", "Zstd"] {
            assert_eq!(&*decompress(&compressed, Some(enc), MIB).unwrap(), &body[..], "{enc}");
        }
        // A streaming frame at a high level declares a wide window; it must still decode under a small limit.
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
        enc.write_all(&body).unwrap();
        let compressed = enc.finish().unwrap();
        assert_eq!(&*decompress(&compressed, Some("zstd"), body.len()).unwrap(), &body[..]);
    }

    #[test]
    fn output_exactly_at_limit_is_accepted() {
        let body = sample_body();
        for (enc, compressed) in [("gzip", gzip(&body)), ("deflate", zlib(&body))] {
            assert_eq!(
                decompress(&compressed, Some(enc), body.len()).unwrap().len(),
                body.len()
            );
            assert_eq!(
                decompress(&compressed, Some(enc), body.len() - 1),
                Err(CoreError::TooLarge { limit: body.len() - 1 })
            );
        }
        let compressed = zstd::stream::encode_all(&body[..], 3).unwrap();
        assert_eq!(
            decompress(&compressed, Some("zstd"), body.len() - 1),
            Err(CoreError::TooLarge { limit: 199_999 })
        );
    }

    #[test]
    fn gzip_bomb_stops_at_limit() {
        let zeros = vec![0u8; 10 * MIB];
        let bomb = gzip(&zeros);
        assert!(bomb.len() < 20 * 1024, "bomb is {} bytes", bomb.len());
        assert_eq!(
            decompress(&bomb, Some("gzip"), MIB),
            Err(CoreError::TooLarge { limit: MIB })
        );
        // The buffer never grows past the limit (+ 1 byte), whatever the compression ratio.
        let mut out = Vec::new();
        assert!(crate::inflate::gzip(&bomb, 10 * MIB, &mut out).is_ok());
        assert!(out.capacity() <= 10 * MIB + 1, "capacity {}", out.capacity());
        let mut out = Vec::new();
        let err = crate::inflate::gzip(&bomb, MIB, &mut out).err().unwrap();
        assert!(matches!(err, ReadError::TooLarge));
        assert!(out.capacity() <= MIB + 1, "capacity {}", out.capacity());
        // The readers' path (zstd, br) keeps its own bound.
        let mut out = Vec::new();
        let err = read_bounded(MultiGzDecoder::new(&bomb[..]), bomb.len(), MIB, &mut out)
            .err()
            .unwrap();
        assert!(matches!(err, ReadError::TooLarge));
    }

    #[test]
    fn zstd_and_deflate_bombs_stop_at_limit() {
        let zeros = vec![0u8; 10 * MIB];
        let zbomb = zstd::stream::encode_all(&zeros[..], 3).unwrap();
        assert_eq!(
            decompress(&zbomb, Some("zstd"), MIB),
            Err(CoreError::TooLarge { limit: MIB })
        );
        assert_eq!(
            decompress(&zlib(&zeros), Some("deflate"), MIB),
            Err(CoreError::TooLarge { limit: MIB })
        );
        assert_eq!(
            decompress(&raw_deflate(&zeros), Some("deflate"), MIB),
            Err(CoreError::TooLarge { limit: MIB })
        );
    }

    #[test]
    fn corrupt_data_is_a_decode_error() {
        let mut compressed = gzip(&sample_body());
        let mid = compressed.len() / 2;
        compressed[mid..mid + 16].fill(0xAA);
        let err = decompress(&compressed, Some("gzip"), MIB).unwrap_err();
        assert!(
            matches!(&err, CoreError::Decode(msg) if msg.starts_with("invalid gzip data: ")),
            "{err:?}"
        );

        let err = decompress(b"not gzip at all", Some("gzip"), MIB).unwrap_err();
        assert!(
            matches!(&err, CoreError::Decode(msg) if msg.starts_with("invalid gzip data: ")),
            "{err:?}"
        );

        let truncated = &gzip(&sample_body())[..100];
        assert!(matches!(
            decompress(truncated, Some("gzip"), MIB),
            Err(CoreError::Decode(_))
        ));

        let err = decompress(b"\xff\xfe not zstd", Some("zstd"), MIB).unwrap_err();
        assert!(
            matches!(&err, CoreError::Decode(msg) if msg.starts_with("invalid zstd data: ")),
            "{err:?}"
        );

        let err = decompress(&[0xff; 64], Some("deflate"), MIB).unwrap_err();
        assert!(
            matches!(&err, CoreError::Decode(msg) if msg.starts_with("invalid deflate data: ")),
            "{err:?}"
        );
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn brotli() {
        // Python's brotli.compress(b"hello brotli " * 8).
        let body = unhex("1b6700f81da9539fbb702d5686262741d8e8922ded2d008c06ae99f10b");
        assert_eq!(
            &*decompress(&body, Some("br"), MIB).unwrap(),
            b"hello brotli ".repeat(8).as_slice()
        );
        // 14 bytes that inflate to 4 MiB of zeros: stopped at the limit.
        let bomb = unhex("9bffff3ff82700e2b14020f7fe07");
        assert_eq!(
            decompress(&bomb, Some("BR"), MIB),
            Err(CoreError::TooLarge { limit: MIB })
        );
        assert_eq!(decompress(&bomb, Some("br"), 8 * MIB).unwrap().len(), 4 * MIB);
        assert!(
            matches!(decompress(b"\xff\xff\xff", Some("br"), MIB), Err(CoreError::Decode(m)) if m.starts_with("invalid br data"))
        );
    }

    #[test]
    fn unsupported_encodings() {
        let err = decompress(b"x", Some("lz4"), MIB).unwrap_err();
        assert_eq!(
            err,
            CoreError::Unsupported(
                "unsupported Content-Encoding \"lz4\" (supported: gzip, deflate, zstd, br, identity)".to_string()
            )
        );
        let long = "x".repeat(64 * 1024);
        let CoreError::Unsupported(m) = decompress(b"x", Some(&long), MIB).unwrap_err() else {
            panic!("expected Unsupported")
        };
        assert!(
            m.len() < 200 && m.starts_with("unsupported Content-Encoding \"xxx") && m.contains("…\""),
            "{m}"
        );
        for enc in ["gzip, br", "gzip,identity", "compress", "snappy", "utf-8"] {
            assert!(
                matches!(decompress(b"x", Some(enc), MIB), Err(CoreError::Unsupported(_))),
                "{enc}"
            );
        }
    }

    #[test]
    fn empty_body_with_encoding_is_empty() {
        for enc in ["gzip", "deflate", "zstd"] {
            assert!(decompress(b"", Some(enc), MIB).unwrap().is_empty(), "{enc}");
        }
    }

    #[test]
    fn scratch_answers_as_a_fresh_buffer() {
        // One thread, bodies of different sizes and limits back to back through the reused
        // buffer: each answer is `decompress`'s, a bomb still stops at the limit, and a body
        // over a small limit whose stream is corrupt further on is "too large" both ways.
        let big = sample_body();
        let mut corrupt_late = zlib(&big);
        let at = corrupt_late.len() - 40;
        corrupt_late[at..at + 8].fill(0xAA);
        let bomb = gzip(&vec![0u8; 10 * MIB]);
        let cases: Vec<(Vec<u8>, &str, usize)> = vec![
            (gzip(&big), "gzip", MIB),
            (gzip(b"small"), "gzip", MIB),
            (corrupt_late.clone(), "deflate", 1000),
            (corrupt_late, "deflate", MIB),
            (bomb.clone(), "gzip", MIB),
            (gzip(&big), "gzip", big.len() - 1),
            (bomb, "gzip", 2 * MIB),
            (zlib(&big), "deflate", big.len()),
            (gzip(b"a"), "gzip", 0),
        ];
        for (body, enc, limit) in &cases {
            let fresh = decompress(body, Some(enc), *limit).map(|c| c.into_owned());
            let reused = with_decompressed(body, Some(enc), *limit, |b| Ok(b.to_vec()));
            assert_eq!(reused, fresh, "{enc} {limit}");
            SCRATCH.with(|s| assert!(s.borrow().capacity() <= (limit + 1).max(MIN_INITIAL)));
        }
        // The buffer is kept between requests (no new allocation for a like-sized body).
        let body = gzip(&big);
        let first = with_decompressed(&body, Some("gzip"), MIB, |b| Ok(b.as_ptr() as usize)).unwrap();
        let again = with_decompressed(&body, Some("gzip"), MIB, |b| Ok(b.as_ptr() as usize)).unwrap();
        assert_eq!(first, again);
    }

    #[test]
    fn zero_limit() {
        assert!(decompress(&gzip(b""), Some("gzip"), 0).unwrap().is_empty());
        assert_eq!(
            decompress(&gzip(b"a"), Some("gzip"), 0),
            Err(CoreError::TooLarge { limit: 0 })
        );
    }

    fn line(prefix: &[u8], enc: Option<&str>, complete: bool, limit: usize) -> FirstLine<'static> {
        match first_line(prefix, enc, complete, limit, MIB).unwrap() {
            FirstLine::Line { line, ended } => FirstLine::Line {
                line: Cow::Owned(line.into_owned()),
                ended,
            },
            FirstLine::TooLong => FirstLine::TooLong,
            FirstLine::Incomplete => FirstLine::Incomplete,
        }
    }

    fn ended(text: &[u8]) -> FirstLine<'static> {
        FirstLine::Line {
            line: Cow::Owned(text.to_vec()),
            ended: true,
        }
    }

    #[test]
    fn first_line_of_every_encoding() {
        let body = b"{\"dsn\":\"x\"}\nsecond line\n".to_vec();
        let encoded: Vec<(Option<&str>, Vec<u8>)> = vec![
            (None, body.clone()),
            (Some("gzip"), gzip(&body)),
            (Some("deflate"), zlib(&body)),
            (Some("deflate"), raw_deflate(&body)),
            (Some("zstd"), zstd::stream::encode_all(&body[..], 3).unwrap()),
            (
                Some("br"),
                unhex("8b0b807b2264736e223a2278227d0a7365636f6e64206c696e650a03"),
            ),
        ];
        for (enc, data) in &encoded {
            assert_eq!(line(data, *enc, true, 64), ended(b"{\"dsn\":\"x\"}"), "{enc:?}");
            // Every prefix either says the line is incomplete or finds it whole.
            for n in 0..data.len() {
                let got = line(&data[..n], *enc, false, 64);
                assert!(
                    got == FirstLine::Incomplete || got == ended(b"{\"dsn\":\"x\"}"),
                    "{enc:?} {n}: {got:?}"
                );
            }
            assert_eq!(line(data, *enc, false, 10), FirstLine::TooLong, "{enc:?}");
            assert_eq!(line(data, *enc, true, 11), ended(b"{\"dsn\":\"x\"}"), "{enc:?}");
        }
    }

    #[test]
    fn first_line_without_newline() {
        // The whole body is the line when it is complete; an empty body is an empty line.
        let whole = FirstLine::Line {
            line: Cow::Owned(b"{}".to_vec()),
            ended: false,
        };
        assert_eq!(line(b"{}", None, true, 64), whole);
        assert_eq!(line(&gzip(b"{}"), Some("gzip"), true, 64), whole);
        assert_eq!(line(b"{}", None, false, 64), FirstLine::Incomplete);
        let empty = FirstLine::Line {
            line: Cow::Owned(Vec::new()),
            ended: false,
        };
        assert_eq!(line(b"", Some("gzip"), true, 64), empty);
        assert_eq!(line(b"", None, false, 64), FirstLine::Incomplete);
    }

    #[test]
    fn first_line_of_a_bomb_stops_at_the_limit() {
        // 10 MiB without a newline in ~10 KiB of gzip: refused after inflating the limit.
        let bomb = gzip(&vec![b'0'; 10 * MIB]);
        assert_eq!(line(&bomb, Some("gzip"), true, 64 * 1024), FirstLine::TooLong);
        assert_eq!(
            line(&bomb[..bomb.len() / 2], Some("gzip"), false, 64 * 1024),
            FirstLine::TooLong
        );
        // Identity: only the limit (plus one byte) is searched.
        let mut plain = vec![b'0'; 10 * MIB];
        plain.push(b'\n');
        assert_eq!(line(&plain, None, true, 64 * 1024), FirstLine::TooLong);
    }

    #[test]
    fn first_line_errors() {
        assert!(matches!(
            first_line(b"x", Some("lz4"), true, 64, MIB),
            Err(CoreError::Unsupported(_))
        ));
        // Corrupt data: an error once the body is complete; before that it may be the cut.
        assert!(matches!(
            first_line(b"not gzip", Some("gzip"), true, 64, MIB),
            Err(CoreError::Decode(m)) if m.starts_with("invalid gzip data")
        ));
        assert_eq!(line(b"not gzip", Some("gzip"), false, 64), FirstLine::Incomplete);
        assert!(matches!(
            first_line(b"\xff\xfe not zstd", Some("zstd"), true, 64, MIB),
            Err(CoreError::Decode(m)) if m.starts_with("invalid zstd data")
        ));
    }

    #[test]
    fn raw_deflate_that_looks_like_zlib() {
        // A raw stored block whose first two bytes (0x08 0x1d) pass the zlib header check, and
        // which read as zlib yields some output before running out: only the raw reading counts.
        let data: Vec<u8> = [0x1d, 0x00].into_iter().chain((0..27).map(|i| b'a' + i)).collect();
        let mut body = vec![0x08, 0x1d, 0x00, 0xe2, 0xff];
        body.extend(&data);
        body.extend([0x01, 0x00, 0x00, 0xff, 0xff]);
        assert!(looks_like_zlib(&body));
        assert_eq!(&*decompress(&body, Some("deflate"), MIB).unwrap(), &data[..]);
        let reused = with_decompressed(&body, Some("deflate"), MIB, |b| Ok(b.to_vec()));
        assert_eq!(reused.unwrap(), data);
    }

    #[test]
    fn zlib_header_check() {
        assert!(looks_like_zlib(&zlib(b"abc")));
        assert!(!looks_like_zlib(&raw_deflate(b"abc")));
        assert!(!looks_like_zlib(b"x"));
    }
}
