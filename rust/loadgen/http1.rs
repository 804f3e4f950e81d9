//! The client half of HTTP/1.1 the load generator needs: one request written whole, its response
//! read back by [`parse_response`] over whatever bytes have arrived so far (status line, headers,
//! then a Content-Length, chunked, or close-delimited body).

/// What the bytes read so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole response yet: read more.
    Incomplete,
    /// A whole response of `len` bytes; `keep_alive` false when the server closes after it.
    Done { status: u16, len: usize, keep_alive: bool },
    /// Neither a length nor chunked: the body runs until the server closes the connection.
    UntilClose { status: u16 },
}

/// Longest response head accepted (status line and headers).
pub const MAX_HEAD: usize = 64 * 1024;

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn cut(text: &[u8]) -> String {
    let shown = &text[..text.len().min(80)];
    String::from_utf8_lossy(shown).escape_debug().to_string()
}

/// Parses the response at the start of `buf`. Errors name what is malformed.
pub fn parse_response(buf: &[u8]) -> Result<Parsed, String> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(format!("response head over {MAX_HEAD} bytes"));
        }
        return Ok(Parsed::Incomplete);
    };
    let head_len = end + 4;
    let mut lines = buf[..end]
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    let (http10, status) = status_line_parts(status_line)?;
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut keep_alive = !http10;
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(format!("header line without a colon: \"{}\"", cut(line)));
        };
        let name = &line[..colon];
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| format!("bad Content-Length \"{}\"", cut(value)))?;
            if length.is_some_and(|m| m != n) {
                return Err("conflicting Content-Length headers".into());
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    if (100..200).contains(&status) && status != 101 {
        // An interim response (100 Continue): the real one follows.
        return Ok(match parse_response(&buf[head_len..])? {
            Parsed::Done {
                status,
                len,
                keep_alive,
            } => Parsed::Done {
                status,
                len: head_len + len,
                keep_alive,
            },
            other => other,
        });
    }
    if status == 204 || status == 304 {
        return Ok(Parsed::Done {
            status,
            len: head_len,
            keep_alive,
        });
    }
    if chunked {
        return Ok(match chunked_len(&buf[head_len..])? {
            Some(body) => Parsed::Done {
                status,
                len: head_len + body,
                keep_alive,
            },
            None => Parsed::Incomplete,
        });
    }
    match length {
        Some(n) if buf.len() >= head_len + n => Ok(Parsed::Done {
            status,
            len: head_len + n,
            keep_alive,
        }),
        Some(_) => Ok(Parsed::Incomplete),
        None => Ok(Parsed::UntilClose { status }),
    }
}

/// The `Retry-After` of a response head in delta-seconds (an HTTP-date is not read: `None`).
pub fn retry_after(buf: &[u8]) -> Option<u32> {
    let end = find(buf, b"\r\n\r\n")?;
    buf[..end].split(|&b| b == b'\n').skip(1).find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let colon = line.iter().position(|&b| b == b':')?;
        if !line[..colon].eq_ignore_ascii_case(b"retry-after") {
            return None;
        }
        std::str::from_utf8(line[colon + 1..].trim_ascii()).ok()?.parse().ok()
    })
}

/// `HTTP/1.x NNN reason` → (is HTTP/1.0, status).
fn status_line_parts(line: &[u8]) -> Result<(bool, u16), String> {
    let bad = || format!("not an HTTP/1.x status line: \"{}\"", cut(line));
    let rest = line.strip_prefix(b"HTTP/1.").ok_or_else(bad)?;
    let (&minor, rest) = rest.split_first().ok_or_else(bad)?;
    let code = rest.strip_prefix(b" ").ok_or_else(bad)?;
    let digits = code
        .get(..3)
        .filter(|d| d.iter().all(u8::is_ascii_digit))
        .ok_or_else(bad)?;
    if !matches!(code.get(3), None | Some(b' ')) || !matches!(minor, b'0' | b'1') {
        return Err(bad());
    }
    let status = digits.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    Ok((minor == b'0', status))
}

/// The length of a whole chunked body at the start of `body` (trailers included), or None when
/// more bytes are needed.
fn chunked_len(body: &[u8]) -> Result<Option<usize>, String> {
    let mut pos = 0;
    loop {
        let Some(eol) = find(&body[pos..], b"\r\n") else {
            return if body.len() - pos > 1024 {
                Err("chunk size line over 1024 bytes".into())
            } else {
                Ok(None)
            };
        };
        let line = &body[pos..pos + eol];
        let hex = line.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
        let size = std::str::from_utf8(hex)
            .ok()
            .filter(|h| !h.is_empty())
            .and_then(|h| usize::from_str_radix(h, 16).ok())
            .ok_or_else(|| format!("bad chunk size \"{}\"", cut(line)))?;
        pos += eol + 2;
        if size == 0 {
            // Trailer lines, then the empty line that ends the body.
            loop {
                let Some(eol) = find(&body[pos..], b"\r\n") else {
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some(pos));
                }
            }
        }
        let end = pos
            .checked_add(size)
            .and_then(|e| e.checked_add(2))
            .ok_or("chunk size overflows")?;
        if body.len() < end {
            return Ok(None);
        }
        if &body[end - 2..end] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        pos = end;
    }
}

/// The request head for a POST of `body_len` bytes (headers as given, one per line).
pub fn request_head(host: &str, port: u16, path: &str, headers: &[(String, String)], body_len: usize) -> Vec<u8> {
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Length: {body_len}\r\n");
    for (name, value) in headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_delta_seconds_only() {
        assert_eq!(retry_after(b"HTTP/1.1 429 X\r\nretry-after:  7 \r\n\r\n"), Some(7));
        assert_eq!(
            retry_after(b"HTTP/1.1 503 X\r\nRetry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\n\r\n"),
            None
        );
        assert_eq!(retry_after(b"HTTP/1.1 503 X\r\nContent-Length: 0\r\n\r\n"), None);
        assert_eq!(retry_after(b"HTTP/1.1 503 X\r\nRetry-After: 1"), None, "head not whole");
    }

    fn done(status: u16, len: usize, keep_alive: bool) -> Parsed {
        Parsed::Done {
            status,
            len,
            keep_alive,
        }
    }

    #[test]
    fn content_length_body() {
        let r = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/x-protobuf\r\n\r\n{}";
        assert_eq!(parse_response(r), Ok(done(200, r.len(), true)));
        // The next response on the connection is not part of this one.
        let mut two = r.to_vec();
        two.extend_from_slice(b"HTTP/1.1 429 Too Many Requests\r\n");
        assert_eq!(parse_response(&two), Ok(done(200, r.len(), true)));
    }

    #[test]
    fn every_partial_read_is_incomplete() {
        let r = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 5\r\n\r\nbusy!";
        for cut in 0..r.len() {
            assert_eq!(parse_response(&r[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
        }
        assert_eq!(parse_response(r), Ok(done(503, r.len(), true)));
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers() {
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n4;x=y\r\nabcd\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n";
        for cut in 0..r.len() {
            assert_eq!(parse_response(&r[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
        }
        assert_eq!(parse_response(r), Ok(done(200, r.len(), true)));
        let plain = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
        assert_eq!(parse_response(plain), Ok(done(200, plain.len(), true)));
    }

    #[test]
    fn connection_close_and_http10() {
        let r = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_response(r), Ok(done(200, r.len(), false)));
        let r = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_response(r), Ok(done(200, r.len(), false)));
        let r = b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(parse_response(r), Ok(done(200, r.len(), true)));
        let r = b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\nbody until close";
        assert_eq!(parse_response(r), Ok(Parsed::UntilClose { status: 200 }));
        let r = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(parse_response(r), Ok(done(204, r.len(), true)));
    }

    #[test]
    fn interim_response_is_skipped() {
        let r = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx";
        assert_eq!(parse_response(r), Ok(done(201, r.len(), true)));
        assert_eq!(parse_response(&r[..30]), Ok(Parsed::Incomplete));
    }

    #[test]
    fn malformed_responses_are_named() {
        let cases: [(&[u8], &str); 7] = [
            (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x status line"),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "not an HTTP/1.x status line"),
            (b"HTTP/2 200\r\n\r\n", "not an HTTP/1.x status line"),
            (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "bad Content-Length"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "conflicting",
            ),
            (b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n", "without a colon"),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "bad chunk size",
            ),
        ];
        for (bytes, want) in cases {
            let err = parse_response(bytes).unwrap_err();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
        let r = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY";
        assert!(parse_response(r).unwrap_err().contains("CRLF"));
        assert!(parse_response(&[b'a'; MAX_HEAD + 1]).unwrap_err().contains("head over"));
    }

    #[test]
    fn request_head_names_the_length() {
        let head = request_head(
            "127.0.0.1",
            4318,
            "/v1/logs",
            &[("Content-Type".into(), "application/x-protobuf".into())],
            12,
        );
        assert_eq!(
            head,
            b"POST /v1/logs HTTP/1.1\r\nHost: 127.0.0.1:4318\r\nContent-Length: 12\r\nContent-Type: application/x-protobuf\r\n\r\n"
        );
    }
}
