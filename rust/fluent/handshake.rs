//! The forward protocol's shared-key handshake (Forward Protocol Specification v1, "Handshake
//! Messages"), independent of the network. With a shared key configured, the server speaks first:
//!
//! - server → `["HELO", {"nonce": bin, "auth": bin or "", "keepalive": true}]`
//! - client → `["PING", hostname, salt, hex(sha512(salt + hostname + nonce + key)), user, pw_digest]`
//!   where `pw_digest = hex(sha512(auth + user + password))` when the HELO asked for users
//! - server → `["PONG", true, "", server_hostname, hex(sha512(salt + server_hostname + nonce + key))]`
//!   (the client can check the server knows the key too), or `["PONG", false, reason, "", ""]` and
//!   the connection is closed.
//!
//! Digests are compared in constant time. Neither the key nor a password ever reaches a message.

use std::fmt;

use sha2::{Digest, Sha512};

use super::msgpack::{self, Mp, ReadError, Reader};

/// Random bytes in a nonce or salt (Fluentd and Fluent Bit use 16 too).
pub const NONCE_BYTES: usize = 16;
/// A PING is a few short strings; a larger one is not a PING.
pub const MAX_PING_BYTES: usize = 16 * 1024;

/// What the server checks PINGs against. `Debug` shows no secrets.
#[derive(Clone)]
pub struct Auth {
    pub shared_key: Vec<u8>,
    /// Sent in the PONG and hashed into its digest (Fluentd's `self_hostname`).
    pub hostname: String,
    /// (username, password); when not empty, the PING must name one of them.
    pub users: Vec<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("hostname", &self.hostname)
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

/// One connection's random challenge: the nonce every digest covers, and the salt of the
/// password digests (only sent when users are configured).
#[derive(Debug, Clone)]
pub struct Challenge {
    nonce: [u8; NONCE_BYTES],
    user_salt: [u8; NONCE_BYTES],
}

impl Challenge {
    /// A fresh challenge from the operating system's random source.
    pub fn new() -> std::io::Result<Self> {
        let mut bytes = [0u8; 2 * NONCE_BYTES];
        getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
        let (nonce, salt) = bytes.split_at(NONCE_BYTES);
        Ok(Challenge::from_parts(
            nonce.try_into().expect("split at NONCE_BYTES"),
            salt.try_into().expect("split at NONCE_BYTES"),
        ))
    }

    pub fn from_parts(nonce: [u8; NONCE_BYTES], user_salt: [u8; NONCE_BYTES]) -> Self {
        Challenge { nonce, user_salt }
    }

    /// The HELO message.
    pub fn helo(&self, auth: &Auth) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(0x92);
        msgpack::put_str(&mut out, b"HELO");
        msgpack::put_map_header(&mut out, 3);
        msgpack::put_str(&mut out, b"nonce");
        msgpack::put_bin(&mut out, &self.nonce);
        msgpack::put_str(&mut out, b"auth");
        if auth.users.is_empty() {
            msgpack::put_str(&mut out, b"");
        } else {
            msgpack::put_bin(&mut out, &self.user_salt);
        }
        msgpack::put_str(&mut out, b"keepalive");
        out.push(0xc3);
        out
    }

    /// Reads the client's PING from the start of `buf` and decides.
    pub fn answer(&self, auth: &Auth, buf: &[u8]) -> Answer {
        let mut reader = Reader::new(buf);
        let value = match reader.value() {
            Ok(v) => v,
            Err(ReadError::Truncated) if buf.len() < MAX_PING_BYTES => return Answer::Incomplete,
            Err(_) => return Answer::refuse("expected a PING message (authentication required)"),
        };
        let used = reader.position();
        match self.check(auth, &value) {
            Ok(salt) => Answer::Accepted {
                used,
                pong: pong_ok(
                    &auth.hostname,
                    &shared_key_digest(salt, auth.hostname.as_bytes(), &self.nonce, &auth.shared_key),
                ),
            },
            Err(reason) => Answer::refuse(reason),
        }
    }

    /// The client's salt when the PING is well formed and its digests match.
    fn check<'a>(&self, auth: &Auth, ping: &Mp<'a>) -> Result<&'a [u8], &'static str> {
        let Mp::Array(items) = ping else {
            return Err("expected a PING message (authentication required)");
        };
        if items.first().and_then(Mp::as_str) != Some(b"PING") {
            return Err("expected a PING message (authentication required)");
        }
        let [_, hostname, salt, digest, username, password_digest] = items.as_slice() else {
            return Err("PING must have 6 elements");
        };
        let (Some(hostname), Some(salt), Some(digest)) = (bytes(hostname), bytes(salt), bytes(digest)) else {
            return Err("PING hostname, salt and digest must be strings");
        };
        let expected = shared_key_digest(salt, hostname, &self.nonce, &auth.shared_key);
        if !constant_time_eq(&expected, digest) {
            return Err("shared_key mismatch");
        }
        if !auth.users.is_empty() {
            let (Some(username), Some(password_digest)) = (bytes(username), bytes(password_digest)) else {
                return Err("username/password mismatch");
            };
            // Every user is compared, so timing does not tell which usernames exist.
            let mut matched = false;
            for (user, password) in &auth.users {
                let expected = password_digest_hex(&self.user_salt, user, password);
                matched |= constant_time_eq(user, username) & constant_time_eq(&expected, password_digest);
            }
            if !matched {
                return Err("username/password mismatch");
            }
        }
        Ok(salt)
    }
}

/// The outcome of reading a PING.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// Not a whole value yet: read more.
    Incomplete,
    /// Authenticated: send `pong`, drop `used` bytes, then serve the stream.
    Accepted { used: usize, pong: Vec<u8> },
    /// Send `pong` (PONG false with the reason) and close.
    Refused { reason: &'static str, pong: Vec<u8> },
}

impl Answer {
    fn refuse(reason: &'static str) -> Self {
        Answer::Refused {
            reason,
            pong: pong(false, reason.as_bytes(), b"", b""),
        }
    }
}

fn bytes<'a>(v: &Mp<'a>) -> Option<&'a [u8]> {
    match v {
        Mp::Str(s) | Mp::Bin(s) => Some(s),
        _ => None,
    }
}

fn pong_ok(hostname: &str, digest: &[u8]) -> Vec<u8> {
    pong(true, b"", hostname.as_bytes(), digest)
}

fn pong(ok: bool, reason: &[u8], hostname: &[u8], digest: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + hostname.len() + reason.len());
    out.push(0x95);
    msgpack::put_str(&mut out, b"PONG");
    out.push(if ok { 0xc3 } else { 0xc2 });
    msgpack::put_str(&mut out, reason);
    msgpack::put_str(&mut out, hostname);
    msgpack::put_str(&mut out, digest);
    out
}

/// `hex(sha512(salt + hostname + nonce + shared_key))`, lower case, as in the PING and the PONG.
pub fn shared_key_digest(salt: &[u8], hostname: &[u8], nonce: &[u8], shared_key: &[u8]) -> [u8; 128] {
    let mut h = Sha512::new();
    for part in [salt, hostname, nonce, shared_key] {
        h.update(part);
    }
    hex(&h.finalize().into())
}

/// `hex(sha512(auth_salt + username + password))`.
pub fn password_digest_hex(auth_salt: &[u8], username: &[u8], password: &[u8]) -> [u8; 128] {
    let mut h = Sha512::new();
    for part in [auth_salt, username, password] {
        h.update(part);
    }
    hex(&h.finalize().into())
}

fn hex(digest: &[u8; 64]) -> [u8; 128] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 128];
    for (i, b) in digest.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0x0f)];
    }
    out
}

/// Equality whose time depends on the lengths only, not on where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(users: &[(&str, &str)]) -> Auth {
        Auth {
            shared_key: b"secret".to_vec(),
            hostname: "gateway".into(),
            users: users
                .iter()
                .map(|(u, p)| (u.as_bytes().to_vec(), p.as_bytes().to_vec()))
                .collect(),
        }
    }

    fn challenge() -> Challenge {
        Challenge::from_parts(*b"nonce-0123456789", *b"usersalt-0123456")
    }

    fn ping(hostname: &str, salt: &[u8], digest: &[u8], user: &[u8], pw: &[u8]) -> Vec<u8> {
        let mut out = vec![0x96];
        for part in [b"PING".as_slice(), hostname.as_bytes(), salt, digest, user, pw] {
            msgpack::put_str(&mut out, part);
        }
        out
    }

    fn pong_items(pong: &[u8]) -> Vec<Mp<'_>> {
        match Reader::new(pong).value().unwrap() {
            Mp::Array(items) => items,
            other => panic!("PONG is not an array: {other:?}"),
        }
    }

    #[test]
    fn known_answer_digests() {
        // python3 -c "import hashlib; print(hashlib.sha512(b'saltclientnoncesecret').hexdigest())"
        let expected = b"1be50de88fcdae1f5a9ec876b6dec05a03596b2d7d5659d9dbbdc6bc667ccbac\
885295aee591cc7189d951779e7667fc849666b14de832ed73f8434db768409c";
        assert_eq!(&shared_key_digest(b"salt", b"client", b"nonce", b"secret"), expected);
        let expected = b"03c58443635c28108485edef3a0889631bc5aa3b03f4a53916db119495e28aa5\
d08f8c0c78405353a17c8e2c15b8216c1cc6bf0375fcfc196215f340332ba157";
        assert_eq!(&password_digest_hex(b"usersalt", b"alice", b"hunter2"), expected);
    }

    #[test]
    fn helo_carries_nonce_and_auth_salt() {
        let c = challenge();
        let helo = c.helo(&auth(&[]));
        let items = pong_items(&helo);
        assert_eq!(items[0], Mp::Str(b"HELO"));
        assert_eq!(items[1].get("nonce"), Some(&Mp::Bin(b"nonce-0123456789")));
        assert_eq!(items[1].get("auth"), Some(&Mp::Str(b"")));
        assert_eq!(items[1].get("keepalive"), Some(&Mp::Bool(true)));
        let helo = c.helo(&auth(&[("alice", "pw")]));
        assert_eq!(pong_items(&helo)[1].get("auth"), Some(&Mp::Bin(b"usersalt-0123456")));
    }

    #[test]
    fn right_key_gets_pong_with_server_digest() {
        let c = challenge();
        let a = auth(&[]);
        let digest = shared_key_digest(b"csalt", b"client", b"nonce-0123456789", b"secret");
        let mut msg = ping("client", b"csalt", &digest, b"", b"");
        msg.extend_from_slice(&[0xc0]); // what follows the PING stays for the stream
        let Answer::Accepted { used, pong } = c.answer(&a, &msg) else {
            panic!("refused")
        };
        assert_eq!(used, msg.len() - 1);
        let items = pong_items(&pong);
        assert_eq!(items[1], Mp::Bool(true));
        assert_eq!(items[3], Mp::Str(b"gateway"));
        let server = shared_key_digest(b"csalt", b"gateway", b"nonce-0123456789", b"secret");
        assert_eq!(items[4], Mp::Str(&server));
    }

    #[test]
    fn wrong_key_and_garbage_are_refused_without_leaking() {
        let c = challenge();
        let a = auth(&[]);
        let wrong = shared_key_digest(b"csalt", b"client", b"nonce-0123456789", b"guess");
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (ping("client", b"csalt", &wrong, b"", b""), "shared_key mismatch"),
            (ping("client", b"csalt", &wrong[..127], b"", b""), "shared_key mismatch"),
            (
                vec![0x93, 0xa3, b'a', b'p', b'p', 0x01, 0x80],
                "expected a PING message (authentication required)",
            ),
            (vec![0xc0], "expected a PING message (authentication required)"),
            (
                vec![0x92, 0xa4, b'P', b'I', b'N', b'G', 0x01],
                "PING must have 6 elements",
            ),
            (vec![0xc1], "expected a PING message (authentication required)"),
        ];
        for (msg, reason) in cases {
            match c.answer(&a, &msg) {
                Answer::Refused { reason: r, pong } => {
                    assert_eq!(r, reason);
                    let items = pong_items(&pong);
                    assert_eq!(items[1], Mp::Bool(false));
                    assert_eq!(items[2], Mp::Str(reason.as_bytes()));
                    assert!(!pong.windows(6).any(|w| w == b"secret"));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn ping_cut_short_is_incomplete_until_the_cap() {
        let c = challenge();
        let a = auth(&[]);
        let digest = shared_key_digest(b"s", b"h", b"nonce-0123456789", b"secret");
        let msg = ping("h", b"s", &digest, b"", b"");
        for cut in 0..msg.len() {
            assert_eq!(c.answer(&a, &msg[..cut]), Answer::Incomplete, "{cut}");
        }
        let huge = vec![0xdb, 0xff, 0xff, 0xff, 0xff];
        let mut big = huge.clone();
        big.resize(MAX_PING_BYTES, b'x');
        assert!(matches!(c.answer(&a, &big), Answer::Refused { .. }));
    }

    #[test]
    fn users_need_the_right_password() {
        let c = challenge();
        let a = auth(&[("alice", "hunter2"), ("bob", "pw")]);
        let key = shared_key_digest(b"s", b"h", b"nonce-0123456789", b"secret");
        let good = password_digest_hex(b"usersalt-0123456", b"alice", b"hunter2");
        let bad = password_digest_hex(b"usersalt-0123456", b"alice", b"pw");
        assert!(matches!(
            c.answer(&a, &ping("h", b"s", &key, b"alice", &good)),
            Answer::Accepted { .. }
        ));
        for (user, pw) in [(b"alice".as_slice(), bad.as_slice()), (b"carol", &good), (b"", b"")] {
            assert!(matches!(
                c.answer(&a, &ping("h", b"s", &key, user, pw)),
                Answer::Refused {
                    reason: "username/password mismatch",
                    ..
                }
            ));
        }
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"", b""));
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }

    #[test]
    fn auth_debug_hides_secrets() {
        let shown = format!("{:?}", auth(&[("alice", "hunter2")]));
        assert!(
            !shown.contains("secret") && !shown.contains("hunter2") && !shown.contains("alice"),
            "{shown}"
        );
    }
}
