//! The durable [`Queue`]: append-only segment files under one directory, a ledger of acked
//! positions, and recovery of torn or corrupt data on open. Vector's disk buffer is the model.
//!
//! `<dir>` holds:
//! - `LOCK`, held with an exclusive `flock` while the queue is open: one owner per directory.
//! - `seg-<id>.tgq` segments, `id` in 20 decimal digits and increasing. A segment is a 48-byte
//!   header (magic `TGQSEG01`, id, the first seq each signal gets in it, CRC32C of the rest)
//!   followed by frames. A frame is a 44-byte header (magic `TGQF`, payload length u32, seq u64,
//!   records u64, append time in Unix ms u64, signal u8, 3 zero bytes, CRC32C of the payload,
//!   CRC32C of the 40 header bytes before it) and the payload. Integers are little-endian.
//! - `ledger`: each signal's last seq and each (exporter, signal)'s acked seq, with a CRC32C,
//!   in two slots overwritten in turn (`ledger_file`: an update is one write and one fdatasync,
//!   no rename); created whole (write `ledger.tmp`, rename) at open.
//! - `spare.tmp`: the next segment while it is prepared (see below); deleted on open.
//! - `seg-<id>.dead`: a delivered segment while the reaper shrinks it (below); deleted on open.
//! - `seg-<id>.unreadable`: a segment the disk failed to read (EIO) at open, set aside so that
//!   the rest of the queue opens; never read again by the queue, left for the operator.
//!
//! Appends go to the newest ("active") segment, which rolls at `segment_bytes`; every open starts
//! a new one. A segment is deleted once no configured exporter needs a frame in it (acked, or
//! dropped by that exporter's limits): it leaves the accounting at once, and its file goes to the
//! reaper thread, which shrinks it step by step before deleting it (`REAP_STEP`). Memory holds
//! an index (position and counts per entry) and a bounded cache of recent payloads; older
//! payloads are read back from disk on `take`.
//!
//! Appends write at the segment's tracked end, never at the file's end. With `preallocate`, a
//! thread prepares the next segment ahead of time (`segment_bytes` of zeros, written and synced)
//! once the active one holds 1 MiB, and the roll renames it into place, so an fdatasync after an
//! append overwrites blocks already on disk and commits no size change to the filesystem's
//! journal. A segment grows as written when no spare is ready: the first after open (which gives
//! way to the spare as soon as it is ready), or after a failed preparation. Usage counts written
//! bytes, not file lengths. The format is the same either way: zeros after the last frame are a
//! segment's clean end.
//!
//! A failed fsync poisons its segment: no write it did not cover is ever reported durable (Linux
//! reports the error to one fsync only), the segment takes no more frames, and the next append
//! starts a segment whose header must sync first. A payload the disk does not return keeps the
//! exporter's cursor where it is until a later `take` reads it.
//!
//! On open, frames are checked in order. At a bad frame the scan resumes after it when its header
//! checks out (its length holds, and what it covers is a client's payload, where bytes can look
//! like a frame), else at the next byte; it takes the next offset where a header and its payload
//! both pass their CRCs and the seq fits the segment's sequence, and skips what lies between.
//! When nothing good follows, the tail is cut (the file truncated after the last good frame);
//! when only zeros follow, that is the segment's clean end (found by checking the tail is all
//! zeros, not by hunting for frames in it).
//! Frames whose seq the segment headers rule out are dropped. Each exporter resumes after its
//! acked seq, or at the oldest retained entry when the ledger has nothing believable for it (a new
//! exporter, a lost or corrupt ledger, a position past every frame): redelivery rather than loss.
//! Ledger entries of exporters no longer configured are ignored, so their data is freed.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{CoreError, Result};
use crate::ledger_file::{self, LedgerFile};
use crate::queue::{
    check_exporters, unknown_exporter, DurableSink, Entry, EntryInfo, Payload, Pending, Queue, Seq, SyncPoint, Usage,
};
use crate::signal::Signal;

pub const SEGMENT_HEADER: usize = 48;
pub const FRAME_HEADER: usize = 44;
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;
pub const MIN_SEGMENT_BYTES: u64 = 256;
/// Recovery reads a whole segment into memory, so segments stay modest.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;
/// The highest seq recovery believes: a billion appends a second would take a century to reach
/// it, so a larger one on disk is damage or a frame crafted inside a payload, and refusing it
/// keeps seq arithmetic (and appends) from overflowing.
pub const MAX_SEQ: Seq = 1 << 62;
/// Tries at reading one payload back before `take` gives up on it for now.
const READ_ATTEMPTS: usize = 3;

const SEGMENT_MAGIC: [u8; 8] = *b"TGQSEG01";
const FRAME_MAGIC: [u8; 4] = *b"TGQF";
/// Above the most an LZ4 block can expand (a run of 255-byte match extensions).
const LZ4_MAX_RATIO: u64 = 256;
const LEDGER_MAGIC: [u8; 8] = *b"TGQLDG01";
const LOCK_FILE: &str = "LOCK";
const LEDGER_FILE: &str = "ledger";
const LEDGER_TMP: &str = "ledger.tmp";
/// The next segment while it is prepared (zero-filled, synced), renamed into place at a roll.
const SPARE_FILE: &str = "spare.tmp";
/// Zeros are written this much at a time while a spare is prepared.
const PREALLOC_CHUNK: usize = 1 << 20;
/// A spare is prepared once the active segment holds this much (or half its size, if smaller),
/// so a gateway that queues little never writes a whole segment of zeros.
const SPARE_AFTER: u64 = 1 << 20;

// ---------------------------------------------------------------------------------------------
// On-disk format

/// Reads without panicking: bytes past the end read as zero (callers check lengths first).
fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at.saturating_add(4)) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at.saturating_add(8)) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// How a frame's payload is stored (byte 33 of its header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    /// As appended.
    Raw = 0,
    /// One LZ4 block (`storage.compression = "lz4"`); the header holds the raw length.
    Lz4 = 1,
}

/// The header of one queued entry on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub signal: Signal,
    pub seq: Seq,
    /// At most `u32::MAX` in an LZ4 frame, whose header keeps the raw length in the upper half
    /// of this field (older raw frames keep their full `u64`).
    pub records: u64,
    /// Append time in Unix milliseconds: unlike an `Instant`, it means something after a restart,
    /// so batch delays and `max_age` keep working.
    pub appended_ms: u64,
    /// The payload's length as stored.
    pub len: u32,
    pub payload_crc: u32,
    pub codec: Codec,
    /// The payload's length once decoded (`len` for a raw frame).
    pub raw_len: u32,
}

/// Why bytes are not a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The buffer ends inside the frame: a torn write, or a corrupt length.
    Truncated,
    /// Wrong magic, a CRC mismatch, or a field out of range.
    Corrupt,
}

impl FrameHeader {
    /// `None` when the payload is too long for the 32-bit length.
    pub fn new(signal: Signal, seq: Seq, records: u64, appended_ms: u64, payload: &[u8]) -> Option<Self> {
        Some(FrameHeader {
            signal,
            seq,
            records,
            appended_ms,
            len: u32::try_from(payload.len()).ok()?,
            payload_crc: crc32c::crc32c(payload),
            codec: Codec::Raw,
            raw_len: u32::try_from(payload.len()).ok()?,
        })
    }

    /// The header of an LZ4 frame: `stored` is the block, `raw_len` what it decodes to. `None`
    /// when a length or the record count does not fit the header.
    pub fn lz4(
        signal: Signal,
        seq: Seq,
        records: u64,
        appended_ms: u64,
        raw_len: usize,
        stored: &[u8],
    ) -> Option<Self> {
        u32::try_from(records).ok()?;
        Some(FrameHeader {
            codec: Codec::Lz4,
            raw_len: u32::try_from(raw_len).ok()?,
            ..FrameHeader::new(signal, seq, records, appended_ms, stored)?
        })
    }

    /// Header plus payload, in bytes.
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER as u64 + u64::from(self.len)
    }

    pub fn encode(&self) -> [u8; FRAME_HEADER] {
        let mut h = [0u8; FRAME_HEADER];
        h[0..4].copy_from_slice(&FRAME_MAGIC);
        h[4..8].copy_from_slice(&self.len.to_le_bytes());
        h[8..16].copy_from_slice(&self.seq.to_le_bytes());
        match self.codec {
            Codec::Raw => h[16..24].copy_from_slice(&self.records.to_le_bytes()),
            Codec::Lz4 => {
                let records = u32::try_from(self.records).unwrap_or(u32::MAX);
                h[16..20].copy_from_slice(&records.to_le_bytes());
                h[20..24].copy_from_slice(&self.raw_len.to_le_bytes());
            }
        }
        h[24..32].copy_from_slice(&self.appended_ms.to_le_bytes());
        h[32] = self.signal.index() as u8;
        h[33] = self.codec as u8;
        h[36..40].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32c::crc32c(&h[..40]);
        h[40..44].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Checks and parses the header at the start of `buf` (the payload is not looked at).
    pub fn decode(buf: &[u8]) -> std::result::Result<Self, FrameError> {
        let Some(h) = buf.get(..FRAME_HEADER) else {
            return Err(FrameError::Truncated);
        };
        if h[..4] != FRAME_MAGIC || crc32c::crc32c(&h[..40]) != u32_at(h, 40) || h[34..36] != [0, 0] {
            return Err(FrameError::Corrupt);
        }
        let signal = *Signal::ALL.get(usize::from(h[32])).ok_or(FrameError::Corrupt)?;
        let len = u32_at(h, 4);
        let (codec, records, raw_len) = match h[33] {
            0 => (Codec::Raw, u64_at(h, 16), len),
            1 => (Codec::Lz4, u64::from(u32_at(h, 16)), u32_at(h, 20)),
            _ => return Err(FrameError::Corrupt),
        };
        // An LZ4 block expands at most about 255-fold: a larger claim is damage, refused before
        // anything is allocated for it.
        if u64::from(raw_len) > u64::from(len) * LZ4_MAX_RATIO {
            return Err(FrameError::Corrupt);
        }
        Ok(FrameHeader {
            signal,
            seq: u64_at(h, 8),
            records,
            appended_ms: u64_at(h, 24),
            len,
            payload_crc: u32_at(h, 36),
            codec,
            raw_len,
        })
    }
}

/// The payload as an LZ4 block, when that is smaller.
pub fn lz4_pack(payload: &[u8]) -> Option<Vec<u8>> {
    let mut out = vec![0u8; lz4_flex::block::get_maximum_output_size(payload.len())];
    let n = lz4_flex::block::compress_into(payload, &mut out).ok()?;
    out.truncate(n);
    (n < payload.len()).then_some(out)
}

/// A frame's payload as appended: `None` when it does not decode to its recorded length.
pub fn unpack(header: &FrameHeader, stored: Vec<u8>) -> Option<Vec<u8>> {
    match header.codec {
        Codec::Raw => Some(stored),
        Codec::Lz4 => {
            let mut out = vec![0u8; usize::try_from(header.raw_len).ok()?];
            let n = lz4_flex::block::decompress_into(&stored, &mut out).ok()?;
            (n == out.len()).then_some(out)
        }
    }
}

/// One frame as written to a segment.
pub fn encode_frame(header: &FrameHeader, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER + payload.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
    out
}

/// Checks the frame at the start of `buf`: header, length, payload CRC.
pub fn decode_frame(buf: &[u8]) -> std::result::Result<(FrameHeader, &[u8]), FrameError> {
    let header = FrameHeader::decode(buf)?;
    let end = FRAME_HEADER
        .checked_add(usize::try_from(header.len).map_err(|_| FrameError::Corrupt)?)
        .ok_or(FrameError::Corrupt)?;
    let payload = buf.get(FRAME_HEADER..end).ok_or(FrameError::Truncated)?;
    if crc32c::crc32c(payload) != header.payload_crc {
        return Err(FrameError::Corrupt);
    }
    Ok((header, payload))
}

/// The header every segment file starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub id: u64,
    /// The seq the next entry of each signal got when the segment was started (by
    /// [`Signal::index`]): keeps seqs monotonic across restarts even when every frame was freed.
    pub starts: [Seq; 3],
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER] {
        let mut h = [0u8; SEGMENT_HEADER];
        h[..8].copy_from_slice(&SEGMENT_MAGIC);
        h[8..16].copy_from_slice(&self.id.to_le_bytes());
        for (i, start) in self.starts.iter().enumerate() {
            h[16 + 8 * i..24 + 8 * i].copy_from_slice(&start.to_le_bytes());
        }
        let crc = crc32c::crc32c(&h[..44]);
        h[44..48].copy_from_slice(&crc.to_le_bytes());
        h
    }

    pub fn decode(buf: &[u8]) -> Option<Self> {
        let h = buf.get(..SEGMENT_HEADER)?;
        if h[..8] != SEGMENT_MAGIC || h[40..44] != [0; 4] || crc32c::crc32c(&h[..44]) != u32_at(h, 44) {
            return None;
        }
        Some(SegmentHeader {
            id: u64_at(h, 8),
            starts: [u64_at(h, 16), u64_at(h, 24), u64_at(h, 32)],
        })
    }
}

/// What one segment file holds, as [`scan_segment`] found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentScan {
    /// `None` when the header is missing or fails its check (frames are still scanned).
    pub header: Option<SegmentHeader>,
    /// Good frames and the offset of each in the file.
    pub frames: Vec<(FrameHeader, u64)>,
    /// Corrupt bytes skipped between good frames, and in how many places.
    pub skipped_bytes: u64,
    pub skipped_regions: u64,
    /// Where the file should be cut when it ends in a torn or corrupt tail.
    pub cut_at: Option<u64>,
    /// Where the written data ends: the start of the all-zero tail a preallocated segment has
    /// after its last frame (the buffer's length when there is none). A zero tail is the clean
    /// end of a segment, not damage.
    pub data_end: u64,
}

/// Where the run of zero bytes that ends `buf` starts (`buf.len()` when it ends in a non-zero
/// byte). Compares 64 bytes at a time, so a 64 MiB zero tail costs milliseconds.
pub fn zero_tail_start(buf: &[u8]) -> usize {
    const BLOCK: usize = 64;
    let mut end = buf.len();
    let aligned = end - end % BLOCK;
    // The ragged end first, then whole blocks, then the last non-zero block byte by byte.
    if let Some(i) = buf[aligned..].iter().rposition(|&b| b != 0) {
        return aligned + i + 1;
    }
    end = aligned;
    while end >= BLOCK {
        let block = &buf[end - BLOCK..end];
        if block.iter().fold(0u8, |acc, &b| acc | b) != 0 {
            let i = block.iter().rposition(|&b| b != 0).unwrap_or(0);
            return end - BLOCK + i + 1;
        }
        end -= BLOCK;
    }
    end
}

/// Whether a frame found by resyncing after damage can be one this segment holds: a frame
/// inside a client's payload also passes its CRCs. Each signal's seqs in a segment are
/// consecutive, so one found `gap` bytes after the last good frame is at most `gap /
/// FRAME_HEADER` frames past the last seq seen (`last`, from the header before any frame).
fn fits_sequence(h: &FrameHeader, last: &[Option<Seq>; 3], gap: usize) -> bool {
    if h.seq == 0 || h.seq > MAX_SEQ {
        return false;
    }
    match last[h.signal.index()] {
        Some(last) => h.seq > last && h.seq - last <= 1 + (gap / FRAME_HEADER) as u64,
        None => true,
    }
}

/// The offset of the next good frame at or after `from` that fits the sequence after the last
/// good frame, which ended at `good_end`. A frame starts with its (non-zero) magic, so none
/// starts at or after `data_end`, the zero tail.
fn next_frame(buf: &[u8], from: usize, good_end: usize, data_end: usize, last: &[Option<Seq>; 3]) -> Option<usize> {
    let mut at = from;
    while let Some(rest) = buf.get(at..data_end) {
        let candidate = at + rest.windows(FRAME_MAGIC.len()).position(|w| w == FRAME_MAGIC)?;
        if let Ok((h, _)) = decode_frame(buf.get(candidate..)?) {
            if fits_sequence(&h, last, candidate - good_end) {
                return Some(candidate);
            }
        }
        at = candidate + 1;
    }
    None
}

/// Finds the good frames of a segment file's contents. Never fails: whatever does not check out
/// is reported as skipped or as a tail to cut. Zeros after the last frame (a preallocated
/// segment's unwritten rest) end the segment cleanly.
pub fn scan_segment(buf: &[u8]) -> SegmentScan {
    let data_end = zero_tail_start(buf);
    let mut scan = SegmentScan {
        header: SegmentHeader::decode(buf),
        data_end: data_end as u64,
        ..SegmentScan::default()
    };
    if buf.len() < SEGMENT_HEADER {
        // A segment torn while its header was written holds nothing.
        scan.cut_at = (!buf.is_empty()).then_some(0);
        return scan;
    }
    let mut last = scan.header.map_or([None; 3], |h| h.starts.map(|s| s.checked_sub(1)));
    let mut pos = SEGMENT_HEADER;
    while let Some(rest) = buf.get(pos..).filter(|r| !r.is_empty()) {
        match decode_frame(rest) {
            Ok((header, payload)) => {
                scan.frames.push((header, pos as u64));
                let seen = &mut last[header.signal.index()];
                *seen = (*seen).max(Some(header.seq));
                pos += FRAME_HEADER + payload.len();
            }
            Err(_) if pos >= data_end => break,
            Err(_) => {
                // A header that passes its check was written by the queue, so its length holds:
                // the bytes it covers are a client's payload, where a frame may be embedded. Only
                // a damaged header leaves nothing better than looking at every byte.
                let resume = match FrameHeader::decode(rest) {
                    Ok(h) => usize::try_from(h.frame_len()).map_or(usize::MAX, |n| pos.saturating_add(n)),
                    Err(_) => pos + 1,
                };
                match next_frame(buf, resume, pos, data_end, &last) {
                    Some(next) => {
                        scan.skipped_bytes += (next - pos) as u64;
                        scan.skipped_regions += 1;
                        pos = next;
                    }
                    None => {
                        scan.cut_at = Some(pos as u64);
                        break;
                    }
                }
            }
        }
    }
    scan
}

/// The acked positions as stored in `<dir>/ledger`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger {
    /// Each signal's last appended seq when the ledger was written.
    pub last: [Seq; 3],
    pub acked: Vec<(String, Signal, Seq)>,
}

impl Ledger {
    /// magic, entry count u32, `last` 3×u64, entries (name length u16, name, signal u8, acked
    /// u64), CRC32C of everything before it.
    pub fn encode(&self) -> Vec<u8> {
        let entries: Vec<_> = self
            .acked
            .iter()
            .filter_map(|(name, signal, seq)| Some((u16::try_from(name.len()).ok()?, name, signal, seq)))
            .collect();
        let mut out = Vec::with_capacity(48 + entries.len() * 32);
        out.extend_from_slice(&LEDGER_MAGIC);
        out.extend_from_slice(&u32::try_from(entries.len()).unwrap_or(u32::MAX).to_le_bytes());
        for last in self.last {
            out.extend_from_slice(&last.to_le_bytes());
        }
        for (len, name, signal, seq) in entries.into_iter().take(u32::MAX as usize) {
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.push(signal.index() as u8);
            out.extend_from_slice(&seq.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// `None` when the bytes fail any check.
    pub fn decode(buf: &[u8]) -> Option<Self> {
        let body_len = buf.len().checked_sub(4)?;
        let body = &buf[..body_len];
        if body.len() < 36 || body[..8] != LEDGER_MAGIC || crc32c::crc32c(body) != u32_at(buf, body_len) {
            return None;
        }
        let count = u32_at(body, 8);
        let last = [u64_at(body, 12), u64_at(body, 20), u64_at(body, 28)];
        let mut acked = Vec::new();
        let mut pos = 36;
        for _ in 0..count {
            let len = usize::from(u16::from_le_bytes(body.get(pos..pos + 2)?.try_into().ok()?));
            let name = std::str::from_utf8(body.get(pos + 2..pos + 2 + len)?).ok()?;
            pos += 2 + len;
            let signal = *Signal::ALL.get(usize::from(*body.get(pos)?))?;
            let seq = u64::from_le_bytes(body.get(pos + 1..pos + 9)?.try_into().ok()?);
            pos += 9;
            acked.push((name.to_owned(), signal, seq));
        }
        (pos == body.len()).then_some(Ledger { last, acked })
    }
}

// ---------------------------------------------------------------------------------------------
// Options and report

/// When appends and ledger updates reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// `append` returns after fdatasync (a 200 means on disk); concurrent appends share one
    /// fdatasync. The ledger is fsynced at every ack.
    Always,
    /// A background thread syncs segments and the ledger this often: a crashed machine loses
    /// at most one interval, a killed process nothing.
    Interval(Duration),
    /// Left to the kernel: survives a killed process, not a power loss.
    Never,
}

impl Fsync {
    /// `always`, `interval` (every `interval`) or `never`.
    pub fn parse(name: &str, interval: Duration) -> Result<Self> {
        match name {
            "always" => Ok(Fsync::Always),
            "never" => Ok(Fsync::Never),
            "interval" if interval.is_zero() => Err(CoreError::Usage("fsync_interval_ms must be at least 1".into())),
            "interval" => Ok(Fsync::Interval(interval)),
            other => Err(CoreError::Usage(format!(
                "unknown fsync policy {other:?} (expected always, interval or never)"
            ))),
        }
    }

    fn durable(self) -> bool {
        !matches!(self, Fsync::Never)
    }
}

/// Optional per-exporter bounds. Past either, the exporter's oldest entries not yet handed to it
/// are dropped for it alone (its cursor moves on; other exporters still get them), so a dead
/// destination cannot fill the queue for the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExporterLimit {
    /// Payload bytes the exporter may have outstanding, all signals together.
    pub max_bytes: Option<u64>,
    /// Age after which an entry not yet handed to the exporter is dropped for it.
    pub max_age: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct DiskOptions {
    pub dir: PathBuf,
    pub exporters: Vec<String>,
    /// Bound on the segment files' total size; `append` answers `QueueFull` past it.
    pub max_bytes: u64,
    pub segment_bytes: u64,
    pub fsync: Fsync,
    /// Recent payloads kept in memory so the usual `take` does not read the disk.
    pub cache_bytes: usize,
    pub limits: Vec<(String, ExporterLimit)>,
    /// Segments are created at their full size, zero-filled and synced ahead of time by a
    /// background thread, so that an fdatasync after an append overwrites data in place instead
    /// of also committing the file's new size to the journal.
    pub preallocate: bool,
    /// Frames are stored as LZ4 blocks where that is smaller: fewer bytes for every fsync to
    /// write and for `max_bytes` to hold.
    pub compress: bool,
    #[cfg(test)]
    pub(crate) faults: Option<Arc<Faults>>,
}

impl DiskOptions {
    pub fn new(dir: impl Into<PathBuf>, exporters: Vec<String>, max_bytes: u64) -> Self {
        DiskOptions {
            dir: dir.into(),
            exporters,
            max_bytes,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            fsync: Fsync::Always,
            cache_bytes: DEFAULT_CACHE_BYTES,
            limits: Vec::new(),
            preallocate: true,
            compress: false,
            #[cfg(test)]
            faults: None,
        }
    }
}

/// What opening the queue found and repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files found.
    pub segments: u64,
    /// Good frames found, with their records and payload bytes.
    pub frames: u64,
    pub records: u64,
    pub bytes: u64,
    /// Of those, the entries (and records) some exporter has not acked: they will be delivered.
    pub pending_entries: u64,
    pub pending_records: u64,
    /// Corrupt bytes skipped in the middle of segments, and in how many places.
    pub skipped_bytes: u64,
    pub skipped_regions: u64,
    /// Good frames ignored because their seq does not fit: not after the one before (a copied
    /// file), or outside what the segment's header and the next segment's allow.
    pub skipped_frames: u64,
    /// Frames known to be missing in segments where bytes were skipped or cut (from seq gaps).
    pub lost_frames: u64,
    /// Bytes cut from torn or corrupt segment tails, and how many segments had one.
    pub cut_bytes: u64,
    pub cut_segments: u64,
    /// Segment headers that failed their check (the frames were still read).
    pub bad_headers: u64,
    /// Segments deleted because nothing in them was still needed.
    pub removed_segments: u64,
    /// 1 when the ledger failed its check: every exporter starts over at the oldest entry.
    pub ledger_corrupt: u64,
    /// 1 when segments were found without a ledger beside them: the same, for a lost ledger.
    pub ledger_missing: u64,
    /// Ledger positions past every frame and segment header (frames lost since it was written,
    /// or a ledger from elsewhere): ignored, so those exporters start over at the oldest entry.
    pub ledger_ahead: u64,
    /// Ledger entries of exporters no longer configured.
    pub ledger_ignored: u64,
    /// 1 when one of the ledger's two slots failed its check (an update torn by a crash): the
    /// other slot's older update was used, so what was acked after it is delivered again.
    pub ledger_torn: u64,
    /// 1 when no new active segment could be written at open (a full disk, a disk refusing
    /// writes): the queue opened to deliver what it holds, and appends fail until one can be.
    pub no_active_segment: u64,
    /// Segments the disk failed to read (EIO), set aside as `seg-<id>.unreadable`.
    pub unreadable_segments: u64,
    /// 1 when the ledger could not be read (EIO): as a corrupt one, every exporter starts over at
    /// the oldest entry.
    pub ledger_unreadable: u64,
}

impl RecoveryReport {
    pub fn items(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("segments", self.segments),
            ("frames", self.frames),
            ("records", self.records),
            ("bytes", self.bytes),
            ("pending_entries", self.pending_entries),
            ("pending_records", self.pending_records),
            ("skipped_bytes", self.skipped_bytes),
            ("skipped_regions", self.skipped_regions),
            ("skipped_frames", self.skipped_frames),
            ("lost_frames", self.lost_frames),
            ("cut_bytes", self.cut_bytes),
            ("cut_segments", self.cut_segments),
            ("bad_headers", self.bad_headers),
            ("removed_segments", self.removed_segments),
            ("no_active_segment", self.no_active_segment),
            ("unreadable_segments", self.unreadable_segments),
            ("ledger_unreadable", self.ledger_unreadable),
            ("ledger_corrupt", self.ledger_corrupt),
            ("ledger_missing", self.ledger_missing),
            ("ledger_ahead", self.ledger_ahead),
            ("ledger_ignored", self.ledger_ignored),
            ("ledger_torn", self.ledger_torn),
        ]
    }
}

// ---------------------------------------------------------------------------------------------
// In-memory index

fn storage(context: impl std::fmt::Display, err: io::Error) -> CoreError {
    CoreError::Storage(format!("{context}: {err}"))
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under these locks leaves consistent state between statements that can fail,
    // so a panic elsewhere does not make the data unusable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Deletes the files of segments nothing needs any more, at once (opening, closing). One that
/// cannot be deleted holds only freed frames: the next open deletes it.
fn unlink(paths: Vec<PathBuf>) {
    for path in paths {
        let _ = fs::remove_file(path);
    }
}

/// Renames `path` to its `.dead` name (so that an open after a crash mid-way deletes what is left
/// rather than reading it as a damaged segment), shrinks it by `REAP_STEP` at a time, pausing in
/// between, then deletes it; stops early (leaving the file for the next open) once `stopped`
/// says so.
fn reap_file(path: &Path, stopped: &dyn Fn() -> bool) {
    let dead = path.with_extension(DEAD_EXTENSION);
    if fs::rename(path, &dead).is_err() {
        let _ = fs::remove_file(path);
        return;
    }
    if let Ok(file) = OpenOptions::new().write(true).open(&dead) {
        let mut len = file.metadata().map_or(0, |m| m.len());
        while len > REAP_STEP {
            if stopped() {
                return;
            }
            len -= REAP_STEP;
            if file.set_len(len).is_err() {
                break;
            }
            thread::sleep(REAP_PAUSE);
        }
    }
    let _ = fs::remove_file(dead);
}

/// Deletes what a crash left of segments being reaped (`reap_file`).
fn remove_dead(dir: &Path) {
    let Ok(listing) = fs::read_dir(dir) else { return };
    for entry in listing.flatten() {
        let path = entry.path();
        let dead = path.extension().is_some_and(|e| e == DEAD_EXTENSION)
            && path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(segment_id_stem)
                .is_some();
        if dead {
            let _ = fs::remove_file(path);
        }
    }
}

fn run_reaper(shared: &Shared) {
    loop {
        let path = {
            let mut reap = lock(&shared.reap);
            while reap.files.is_empty() && !reap.stopped {
                reap = shared.reap_wake.wait(reap).unwrap_or_else(PoisonError::into_inner);
            }
            if reap.stopped {
                return;
            }
            reap.files.remove(0)
        };
        reap_file(&path, &|| lock(&shared.reap).stopped);
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("seg-{id:020}.tgq"))
}

fn segment_id(name: &str) -> Option<u64> {
    segment_id_stem(name.strip_suffix(".tgq")?)
}

/// The id in `seg-<id>`.
fn segment_id_stem(stem: &str) -> Option<u64> {
    let digits = stem.strip_prefix("seg-")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Segment fsyncs and payload reads go through here, so that tests can make them fail the way a
/// failing disk does ([`Faults`]).
#[derive(Debug, Clone, Default)]
struct Io {
    #[cfg(test)]
    faults: Option<Arc<Faults>>,
}

impl Io {
    fn sync_data(&self, file: &File) -> io::Result<()> {
        #[cfg(test)]
        if let Some(faults) = &self.faults {
            faults.before_sync()?;
        }
        file.sync_data()
    }

    fn read_exact_at(&self, file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
        #[cfg(test)]
        if let Some(faults) = &self.faults {
            faults.before_read()?;
        }
        file.read_exact_at(buf, offset)
    }

    #[allow(clippy::unused_self)]
    fn before_ledger_sync(&self) -> io::Result<()> {
        #[cfg(test)]
        if let Some(faults) = &self.faults {
            Faults::fail(&faults.ledgers)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Meta {
    seq: Seq,
    records: u64,
    /// The payload's length as appended (what batches and byte limits count).
    len: u32,
    /// Its length in the segment (smaller when compressed).
    stored: u32,
    segment: u64,
    /// Offset of the frame header in the segment file.
    offset: u64,
    appended: Instant,
    /// Configured exporters that still need the entry; 0 means freed.
    needers: u32,
    /// Lane totals up to and including this entry.
    total_records: u64,
    total_bytes: u64,
    cached: Option<Payload>,
}

#[derive(Debug, Clone, Default)]
struct Cursor {
    read: Seq,
    /// Lane totals at `read`, kept here because that entry may be freed.
    read_records: u64,
    read_bytes: u64,
    acked: Seq,
    /// Ranges `(after, upto]` dropped by a limit while earlier entries were in flight: the ack
    /// that reaches `after` moves `acked` on to `upto`.
    gaps: VecDeque<(Seq, Seq)>,
    /// Payload bytes the exporter still needs in this lane (for its `max_bytes`).
    need_bytes: u64,
    dropped_records: u64,
    dropped_entries: u64,
    /// A `take` is reading payloads for this cursor outside the lock: `read` moves only once it
    /// knows what could be read, and the limits leave the cursor alone meanwhile.
    reading: bool,
    /// The entry the last `take` could not read; delivery waits on it.
    read_failed: Option<Seq>,
}

#[derive(Debug, Default)]
struct Lane {
    /// Entries some exporter may still need, by seq. Seqs can have holes (frames lost to
    /// corruption), so lookups search rather than index by seq.
    metas: VecDeque<Meta>,
    last: Seq,
    /// Totals of everything indexed since open.
    total_records: u64,
    total_bytes: u64,
    /// Entries with `needers > 0`.
    held_records: u64,
    held_bytes: u64,
    cursors: Vec<Cursor>,
}

impl Lane {
    /// Index of the first entry after `seq`.
    fn after(&self, seq: Seq) -> usize {
        self.metas.partition_point(|m| m.seq <= seq)
    }

    fn find(&self, seq: Seq) -> Option<&Meta> {
        self.metas.get(self.after(seq).checked_sub(1)?).filter(|m| m.seq == seq)
    }

    fn find_mut(&mut self, seq: Seq) -> Option<&mut Meta> {
        let i = self.after(seq).checked_sub(1)?;
        self.metas.get_mut(i).filter(|m| m.seq == seq)
    }
}

#[derive(Debug)]
struct Segment {
    path: PathBuf,
    file: Arc<File>,
    size: u64,
    /// How much of the file an fsync is known to have put on disk.
    durable: u64,
    frames: u64,
    /// Frames some exporter still needs.
    live: u64,
    /// Created from a prepared spare: appends overwrite zeros already on disk.
    preallocated: bool,
}

#[derive(Debug, Default)]
struct Cache {
    bytes: usize,
    count: usize,
    /// (lane, seq) in insertion order; entries freed meanwhile are skipped and compacted away.
    order: VecDeque<(usize, Seq)>,
}

#[derive(Debug)]
struct State {
    lanes: [Lane; 3],
    segments: BTreeMap<u64, Segment>,
    active: u64,
    /// Total size of the segment files.
    used: u64,
    cache: Cache,
    /// Bumped at every change the ledger records.
    ledger_gen: u64,
    /// Segments whose `live` count reached 0, to delete once they are not the active one (a
    /// list, so that settling does not walk every segment).
    dead: Vec<u64>,
    /// Files of segments settled away, to delete once the lock is released (`take_unlink`):
    /// deleting a 64 MiB file can take tens of milliseconds (40 ms on the test machine's ext4),
    /// which under the lock would stall every append and the group fsync behind it.
    unlink: Vec<PathBuf>,
    /// Segments an fsync failed on, with how much of each an earlier fsync had put on disk. Linux
    /// reports a writeback error to one fsync only and marks the pages clean, so a later fsync
    /// that succeeds proves nothing about what was written before: the frames past that point
    /// are never reported durable, and the segment takes no more appends. Kept after the file is
    /// deleted (one entry per failure), for writers still waiting on their sync.
    poisoned: BTreeMap<u64, u64>,
    /// The next segment, zero-filled and synced by the preparer thread, taken at the next roll.
    spare: Option<File>,
    /// The preparer was asked for a spare and has not answered yet.
    preparing: bool,
    /// The active segment when preparing a spare last failed: no new try until the next roll.
    spare_failed_for: Option<u64>,
    /// Segments started from a spare.
    spares_used: u64,
}

/// What the preparer thread is asked to do.
#[derive(Debug, Default)]
struct Prep {
    requested: bool,
    stopped: bool,
}

/// Segment files for the reaper thread to delete.
#[derive(Debug, Default)]
struct Reap {
    files: Vec<PathBuf>,
    stopped: bool,
}

/// The reaper shrinks a dead segment by this much at a time, then pauses, before deleting it:
/// on a filesystem mounted with `discard` (the test machine's ext4), freeing 64 MiB at once
/// holds up every fsync on the disk for about 40 ms while the journal commits, which a request
/// waiting for its group fsync sees as a 40 ms stall.
const REAP_STEP: u64 = 4 << 20;
/// A segment's file is renamed to `seg-<id>.dead` while the reaper shrinks it.
const DEAD_EXTENSION: &str = "dead";
/// A segment the disk failed to read at open is renamed to `seg-<id>.unreadable`.
const UNREADABLE_EXTENSION: &str = "unreadable";

/// Whether a read failed for the medium (EIO, EUCLEAN: a bad sector, a damaged filesystem
/// structure), not for anything the queue's own setup could change.
fn is_media_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(5 | 117))
}
const REAP_PAUSE: Duration = Duration::from_millis(10);

/// What does not change after open.
#[derive(Debug)]
struct Config {
    dir: PathBuf,
    exporters: Vec<String>,
    max_bytes: u64,
    segment_bytes: u64,
    fsync: Fsync,
    cache_bytes: usize,
    /// By exporter index.
    limits: Vec<ExporterLimit>,
    preallocate: bool,
    compress: bool,
    io: Io,
}

impl State {
    fn ledger(&self, config: &Config) -> Ledger {
        let mut acked = Vec::with_capacity(config.exporters.len() * 3);
        for (x, name) in config.exporters.iter().enumerate() {
            for signal in Signal::ALL {
                if let Some(c) = self.lanes[signal.index()].cursors.get(x) {
                    acked.push((name.clone(), signal, c.acked));
                }
            }
        }
        Ledger {
            last: [self.lanes[0].last, self.lanes[1].last, self.lanes[2].last],
            acked,
        }
    }

    /// Exporter `x` no longer needs entry `i` of lane `l`.
    fn release(&mut self, l: usize, i: usize, x: usize) {
        let State {
            lanes,
            segments,
            cache,
            dead,
            ..
        } = self;
        let Lane {
            metas,
            cursors,
            held_records,
            held_bytes,
            ..
        } = &mut lanes[l];
        let Some(meta) = metas.get_mut(i) else {
            return;
        };
        if let Some(c) = cursors.get_mut(x) {
            c.need_bytes = c.need_bytes.saturating_sub(u64::from(meta.len));
        }
        if meta.needers == 0 {
            return;
        }
        meta.needers -= 1;
        if meta.needers > 0 {
            return;
        }
        *held_records = held_records.saturating_sub(meta.records);
        *held_bytes = held_bytes.saturating_sub(u64::from(meta.len));
        if let Some(p) = meta.cached.take() {
            cache.bytes = cache.bytes.saturating_sub(p.len());
            cache.count = cache.count.saturating_sub(1);
        }
        if let Some(seg) = segments.get_mut(&meta.segment) {
            seg.live = seg.live.saturating_sub(1);
            if seg.live == 0 {
                dead.push(meta.segment);
            }
        }
    }

    /// Commits exporter `x`'s cursor in lane `l` up to `upto` (already checked against `read`).
    fn ack(&mut self, l: usize, x: usize, upto: Seq) {
        let lane = &self.lanes[l];
        let cursor = &lane.cursors[x];
        if upto <= cursor.acked {
            return;
        }
        let (from, to) = (lane.after(cursor.acked), lane.after(upto));
        let gaps = cursor.gaps.clone();
        for i in from..to {
            let Some(seq) = self.lanes[l].metas.get(i).map(|m| m.seq) else {
                break;
            };
            // Entries in a gap were released when they were dropped.
            if !gaps.iter().any(|&(after, end)| after < seq && seq <= end) {
                self.release(l, i, x);
            }
        }
        let cursor = &mut self.lanes[l].cursors[x];
        cursor.acked = upto;
        while let Some(&(after, end)) = cursor.gaps.front() {
            if after > cursor.acked {
                break;
            }
            cursor.acked = cursor.acked.max(end);
            cursor.gaps.pop_front();
        }
        self.ledger_gen += 1;
    }

    /// Drops for exporter `x` the oldest entry of lane `l` it has not been handed. False when
    /// there is none, or a `take` is reading for that cursor.
    fn drop_oldest_unread(&mut self, l: usize, x: usize) -> bool {
        let lane = &self.lanes[l];
        if lane.cursors[x].reading {
            return false;
        }
        let i = lane.after(lane.cursors[x].read);
        let Some(meta) = lane.metas.get(i) else {
            return false;
        };
        let (seq, records, total_records, total_bytes) = (meta.seq, meta.records, meta.total_records, meta.total_bytes);
        self.release(l, i, x);
        let c = &mut self.lanes[l].cursors[x];
        c.dropped_records = c.dropped_records.saturating_add(records);
        c.dropped_entries += 1;
        let before = c.read;
        c.read = seq;
        c.read_records = total_records;
        c.read_bytes = total_bytes;
        if c.acked == before {
            // Nothing in flight: the drop commits.
            c.acked = seq;
            self.ledger_gen += 1;
        } else if let Some(gap) = c.gaps.back_mut().filter(|g| g.1 == before) {
            gap.1 = seq;
        } else {
            c.gaps.push_back((before, seq));
        }
        true
    }

    /// Applies exporter `x`'s limits: age in the given lanes, bytes across all lanes.
    fn enforce(&mut self, config: &Config, x: usize, now: Instant, age_lanes: &[usize]) {
        let Some(limit) = config.limits.get(x).copied() else {
            return;
        };
        if let Some(max_age) = limit.max_age {
            for &l in age_lanes {
                loop {
                    let lane = &self.lanes[l];
                    let old = lane
                        .metas
                        .get(lane.after(lane.cursors[x].read))
                        .is_some_and(|m| now.saturating_duration_since(m.appended) > max_age);
                    if !old || !self.drop_oldest_unread(l, x) {
                        break;
                    }
                }
            }
        }
        if let Some(max_bytes) = limit.max_bytes {
            while self.lanes.iter().map(|lane| lane.cursors[x].need_bytes).sum::<u64>() > max_bytes {
                let oldest = (0..self.lanes.len())
                    .filter(|&l| !self.lanes[l].cursors[x].reading)
                    .filter_map(|l| {
                        let lane = &self.lanes[l];
                        lane.metas
                            .get(lane.after(lane.cursors[x].read))
                            .map(|m| (m.appended, l))
                    })
                    .min();
                // Only entries in flight are left: the exporter's own retries bound those.
                let Some((_, l)) = oldest else {
                    break;
                };
                self.drop_oldest_unread(l, x);
            }
        }
    }

    fn enforce_all(&mut self, config: &Config, now: Instant) {
        for x in 0..config.exporters.len() {
            self.enforce(config, x, now, &[0, 1, 2]);
        }
    }

    /// Forgets freed entries at the front of each lane and deletes segments nobody needs.
    fn settle(&mut self) -> u64 {
        for lane in &mut self.lanes {
            while lane.metas.front().is_some_and(|m| m.needers == 0) {
                lane.metas.pop_front();
            }
        }
        if self.cache.order.len() > 2 * self.cache.count + 1024 {
            let lanes = &self.lanes;
            self.cache
                .order
                .retain(|&(l, seq)| lanes[l].find(seq).is_some_and(|m| m.cached.is_some()));
        }
        let mut removed = 0;
        // The active segment stays listed until it rolls.
        let (dead, active): (Vec<u64>, Vec<u64>) = self.dead.drain(..).partition(|id| *id != self.active);
        self.dead = active;
        for id in dead {
            if self.segments.get(&id).is_some_and(|seg| seg.live == 0) {
                let Some(seg) = self.segments.remove(&id) else {
                    continue;
                };
                self.used = self.used.saturating_sub(seg.size);
                // Deleted after the lock (a file left behind by a crash holds only freed frames:
                // the next open deletes it).
                self.unlink.push(seg.path);
                removed += 1;
            }
        }
        self.dead.dedup();
        removed
    }

    /// The files `settle` let go of, for the caller to delete once it has released the lock.
    fn take_unlink(&mut self) -> Vec<PathBuf> {
        std::mem::take(&mut self.unlink)
    }

    fn cache_insert(&mut self, config: &Config, l: usize, seq: Seq, payload: &Payload) {
        if payload.len() > config.cache_bytes {
            return;
        }
        if let Some(meta) = self.lanes[l].find_mut(seq) {
            meta.cached = Some(payload.clone());
            self.cache.bytes += payload.len();
            self.cache.count += 1;
            self.cache.order.push_back((l, seq));
        }
        while self.cache.bytes > config.cache_bytes {
            let Some((l, seq)) = self.cache.order.pop_front() else {
                break;
            };
            if let Some(p) = self.lanes[l].find_mut(seq).and_then(|m| m.cached.take()) {
                self.cache.bytes = self.cache.bytes.saturating_sub(p.len());
                self.cache.count = self.cache.count.saturating_sub(1);
            }
        }
    }

    fn starts(&self) -> [Seq; 3] {
        self.lanes.each_ref().map(|lane| lane.last.saturating_add(1))
    }

    /// The active segment as (id, size) while it holds frames no fsync has covered: it is synced
    /// before it rolls, so that "an older segment" means "on disk" (or poisoned) for group commit.
    /// The sync runs outside the state lock, in `Shared::sync_upto`, the one place segment fsyncs
    /// happen: two at once on one file could split an error between them, one reporting success.
    fn unsynced_active(&self, config: &Config) -> Option<(u64, u64)> {
        let seg = self.segments.get(&self.active)?;
        let unsynced = config.fsync.durable() && seg.durable < seg.size && !self.poisoned.contains_key(&self.active);
        unsynced.then_some((self.active, seg.size))
    }

    /// Starts a new active segment (its header is synced before it takes a frame). Callers sync
    /// the old one first, see `unsynced_active`.
    fn roll(&mut self, config: &Config) -> Result<()> {
        let id = next_id(self.active)?;
        let seg = create_segment(config, id, self.starts(), self.spare.take())?;
        self.spares_used += u64::from(seg.preallocated);
        self.used += seg.size;
        self.segments.insert(id, seg);
        self.active = id;
        Ok(())
    }

    /// Rolls away the active segment when nobody needs its frames and the space is wanted
    /// (`force`) or the segment itself holds over half the limit: otherwise a fully delivered
    /// queue would keep those bytes counted (and /readyz failing) until the next append. Returns
    /// the (id, size) to sync first when the segment is not on disk yet.
    fn reclaim(&mut self, config: &Config, force: bool) -> Result<Option<(u64, u64)>> {
        let Some(active) = self.segments.get(&self.active) else {
            return Ok(None);
        };
        if active.frames > 0 && active.live == 0 && (force || active.size > config.max_bytes / 2) {
            if let Some(unsynced) = self.unsynced_active(config) {
                return Ok(Some(unsynced));
            }
            self.roll(config)?;
            self.settle();
        }
        Ok(None)
    }

    /// A poisoned active segment takes no more frames. One that grows as it is written (the
    /// first after open, or one made when no spare was ready) gives way to a ready spare.
    fn needs_roll(&self, config: &Config, frame_len: u64) -> bool {
        self.poisoned.contains_key(&self.active)
            || self.segments.get(&self.active).is_none_or(|a| {
                a.frames > 0 && (a.size + frame_len > config.segment_bytes || (!a.preallocated && self.spare.is_some()))
            })
    }

    /// Whether to ask the preparer for the next segment now (it is then marked as asked).
    fn want_spare(&mut self, config: &Config) -> bool {
        let threshold = SPARE_AFTER.min(spare_len(config) / 2);
        let want = config.preallocate
            && self.spare.is_none()
            && !self.preparing
            && self.spare_failed_for != Some(self.active)
            && self.segments.get(&self.active).is_some_and(|a| a.size >= threshold);
        self.preparing |= want;
        want
    }

    /// Whether segment `id` is on disk up to `end`: `Some(false)` when an fsync failed before
    /// covering it (it never will be), `None` when no fsync has covered it yet.
    fn durable(&self, id: u64, end: u64) -> Option<bool> {
        if let Some(&on_disk) = self.poisoned.get(&id) {
            return Some(end <= on_disk);
        }
        match self.segments.get(&id) {
            Some(seg) if end > seg.durable => None,
            // Older segments were synced when they rolled; a deleted one was older.
            _ => Some(true),
        }
    }

    /// An fsync of segment `id` failed (see `poisoned`).
    fn poison(&mut self, id: u64) {
        let on_disk = self.segments.get(&id).map_or(SEGMENT_HEADER as u64, |s| s.durable);
        self.poisoned.entry(id).or_insert(on_disk);
    }

    fn fits(&self, config: &Config, frame_len: u64) -> bool {
        let header = if self.needs_roll(config, frame_len) {
            SEGMENT_HEADER as u64
        } else {
            0
        };
        self.used + frame_len + header <= config.max_bytes
    }
}

fn next_id(id: u64) -> Result<u64> {
    id.checked_add(1)
        .ok_or_else(|| CoreError::Storage("queue segment ids are exhausted".into()))
}

/// Starts segment `id`: the prepared `spare` renamed into place when there is one (appends then
/// overwrite its zeros), else a new file that grows as it is written.
fn create_segment(config: &Config, id: u64, starts: [Seq; 3], spare: Option<File>) -> Result<Segment> {
    let path = segment_path(&config.dir, id);
    let context = || format!("creating {}", path.display());
    // A spare that cannot be renamed is left for the preparer to replace.
    let spare = spare.filter(|_| fs::rename(config.dir.join(SPARE_FILE), &path).is_ok());
    let preallocated = spare.is_some();
    let file = match spare {
        Some(file) => file,
        None => OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| storage(context(), e))?,
    };
    let header = SegmentHeader { id, starts }.encode();
    // Syncing the header also proves the disk takes writes again after a failed fsync.
    let written = file.write_all_at(&header, 0).and_then(|()| {
        if config.fsync.durable() {
            config.io.sync_data(&file)?;
            sync_dir(&config.dir)?;
        }
        Ok(())
    });
    if let Err(e) = written {
        let _ = fs::remove_file(&path);
        return Err(storage(context(), e));
    }
    Ok(Segment {
        path,
        file: Arc::new(file),
        size: SEGMENT_HEADER as u64,
        durable: SEGMENT_HEADER as u64,
        frames: 0,
        live: 0,
        preallocated,
    })
}

/// The length a spare is made: a segment's, or the whole queue's bound when that is smaller.
fn spare_len(config: &Config) -> u64 {
    config.segment_bytes.min(config.max_bytes)
}

/// Writes `<dir>/spare.tmp`: zeros really written (an `fallocate`d extent would still need a
/// journaled conversion at its first write), then synced, so that the appends into it change
/// no metadata. Gives up with `Interrupted` when `stop` says so.
fn prepare_spare(config: &Config, stop: &dyn Fn() -> bool) -> io::Result<File> {
    let path = config.dir.join(SPARE_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)?;
    let result = (|| {
        #[cfg(test)]
        if let Some(faults) = &config.io.faults {
            // As a full disk answers: ENOSPC.
            Faults::fail(&faults.preallocs).map_err(|_| io::Error::from_raw_os_error(28))?;
        }
        let len = spare_len(config);
        let zeros = vec![0u8; PREALLOC_CHUNK.min(usize::try_from(len).unwrap_or(PREALLOC_CHUNK))];
        let mut at = 0;
        while at < len {
            if stop() {
                return Err(io::Error::from(ErrorKind::Interrupted));
            }
            let n = zeros.len().min(usize::try_from(len - at).unwrap_or(usize::MAX));
            file.write_all_at(&zeros[..n], at)?;
            at += n as u64;
        }
        if config.fsync.durable() {
            file.sync_data()?;
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(file),
        Err(e) => {
            // ENOSPC or a failing disk: the roll falls back to a growing segment, whose appends
            // then meet the same error as before preallocation existed.
            let _ = fs::remove_file(&path);
            Err(e)
        }
    }
}

/// Why a payload did not come back from disk.
#[derive(Debug)]
enum ReadFailure {
    /// The read itself failed: the disk may answer the next one.
    Io(io::Error),
    /// It read back, but not as what was indexed: the frame is damaged.
    Damaged,
}

/// Reads one payload back and checks it against the index.
/// Reads the frame at `offset` back (`len` bytes stored) and decodes its payload.
fn read_payload(
    io: &Io,
    file: &File,
    offset: u64,
    signal: Signal,
    seq: Seq,
    len: u32,
) -> std::result::Result<Vec<u8>, ReadFailure> {
    let mut header = [0u8; FRAME_HEADER];
    io.read_exact_at(file, &mut header, offset).map_err(ReadFailure::Io)?;
    let h = FrameHeader::decode(&header).map_err(|_| ReadFailure::Damaged)?;
    if h.seq != seq || h.signal != signal || h.len != len {
        return Err(ReadFailure::Damaged);
    }
    let mut payload = vec![0u8; usize::try_from(len).map_err(|_| ReadFailure::Damaged)?];
    io.read_exact_at(file, &mut payload, offset + FRAME_HEADER as u64)
        .map_err(ReadFailure::Io)?;
    if crc32c::crc32c(&payload) != h.payload_crc {
        return Err(ReadFailure::Damaged);
    }
    unpack(&h, payload).ok_or(ReadFailure::Damaged)
}

// ---------------------------------------------------------------------------------------------
// The queue

/// A deferred append's wait for the fsync that covers it.
struct Waiter {
    point: SyncPoint,
    sink: Arc<dyn DurableSink>,
    token: u64,
}

#[derive(Debug, Default)]
struct WaitQueue {
    state: Mutex<Waiting>,
    wake: Condvar,
}

#[derive(Default)]
struct Waiting {
    list: Vec<Waiter>,
    /// The queue is closing: waiters that arrive now fail at once.
    stopped: bool,
    /// The syncer sleeps on `wake` (else it is syncing and looks at `list` before it sleeps
    /// again): only then does a new waiter need to wake it, which saves a futex call per append
    /// made while an fsync runs.
    asleep: bool,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("waiters", &self.list.len())
            .field("stopped", &self.stopped)
            .finish()
    }
}

/// The ledger's writer: the generation last written, and the file updates go to (`None` until
/// the first write, and after a failed one).
#[derive(Debug, Default)]
struct LedgerWriter {
    generation: u64,
    file: Option<LedgerFile>,
}

#[derive(Debug)]
struct Shared {
    config: Config,
    state: Mutex<State>,
    /// Held across each segment fsync: concurrent appenders queue here and the first one's sync
    /// usually covers the others' frames too (group commit).
    syncing: Mutex<()>,
    /// Serializes ledger writes; holds the generation last written and the open file.
    ledger_written: Mutex<LedgerWriter>,
    /// The same, readable without waiting for a write in progress (which may be fsyncing).
    ledger_written_gen: AtomicU64,
    stop: Mutex<bool>,
    stop_wake: Condvar,
    /// Deferred appends waiting for their fsync (`Fsync::Always`), settled by the syncer thread.
    waiting: Arc<WaitQueue>,
    /// Payload reads that failed (every attempt).
    read_errors: AtomicU64,
    /// Entries handed out empty because they read back damaged, or were unreadable and had
    /// never been reported durable.
    damaged_entries: AtomicU64,
    /// Failed fsyncs, segment creations, appends, ledger writes and segment preparations.
    storage_errors: AtomicU64,
    /// Spares that could not be prepared (disk full, failing disk).
    prealloc_errors: AtomicU64,
    /// Segment fdatasyncs run, and the appends the syncer's groups covered (their ratio is the
    /// group-commit size an operator sees in /metrics).
    data_syncs: AtomicU64,
    /// Microseconds those segment fdatasyncs took, summed (with `data_syncs`: the mean latency).
    data_sync_us: AtomicU64,
    synced_waiters: AtomicU64,
    /// Ledger updates (in place and fdatasynced when durable; a new file at open, when the
    /// ledger outgrows its slots, or after a failure).
    ledger_writes: AtomicU64,
    /// Requests to the preparer thread.
    prep: Mutex<Prep>,
    prep_wake: Condvar,
    /// Dead segment files for the reaper thread.
    reap: Mutex<Reap>,
    reap_wake: Condvar,
    report: RecoveryReport,
    /// Holds the directory's flock for as long as the queue is open.
    _lock: File,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Returns once segment `id` is on disk up to `end`, syncing it unless a concurrent caller's
    /// sync already covered it (group commit). Fails for bytes that no fsync covered before one
    /// on the segment failed, whatever later fsyncs say: every writer waiting on a failed sync
    /// fails, and so does one that wrote before it and syncs after.
    fn sync_upto(&self, id: u64, end: u64) -> Result<()> {
        let _syncing = lock(&self.syncing);
        let (file, size) = {
            let st = self.lock();
            match st.durable(id, end) {
                Some(true) => return Ok(()),
                Some(false) => {
                    return Err(CoreError::Storage(format!(
                        "an fsync of queue segment {id} failed before it covered this write"
                    )))
                }
                None => {}
            }
            let Some(seg) = st.segments.get(&id) else {
                return Ok(());
            };
            (Arc::clone(&seg.file), seg.size)
        };
        let began = Instant::now();
        let synced = self.config.io.sync_data(&file);
        let took = u64::try_from(began.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.data_sync_us.fetch_add(took, Ordering::Relaxed);
        self.data_syncs.fetch_add(1, Ordering::Relaxed);
        let mut st = self.lock();
        match synced {
            Ok(()) => {
                if let Some(seg) = st.segments.get_mut(&id) {
                    seg.durable = seg.durable.max(size);
                }
                Ok(())
            }
            Err(e) => {
                st.poison(id);
                self.storage_errors.fetch_add(1, Ordering::Relaxed);
                Err(storage(format_args!("syncing queue segment {id}"), e))
            }
        }
    }

    fn write_ledger(&self, generation: u64, ledger: &[u8], durable: bool) -> Result<()> {
        let mut writer = lock(&self.ledger_written);
        if writer.generation >= generation {
            return Ok(());
        }
        let dir = &self.config.dir;
        let result = match writer.file.as_mut().filter(|f| f.fits(ledger)) {
            Some(file) => file.update(ledger, durable, &|| self.config.io.before_ledger_sync()),
            None => LedgerFile::create(dir, &dir.join(LEDGER_FILE), &dir.join(LEDGER_TMP), ledger, durable)
                .map(|file| writer.file = Some(file)),
        };
        self.ledger_writes.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = result {
            // What the failed write left in the file is unknown: the next one starts a new file.
            writer.file = None;
            return Err(storage("writing the queue ledger", e));
        }
        writer.generation = generation;
        self.ledger_written_gen.store(generation, Ordering::Release);
        Ok(())
    }

    /// Syncs the active segment (when `durable`) and writes the ledger if it changed. Failures
    /// are counted here. A poisoned segment is not synced again: its failure was reported when
    /// it happened, and the next append moves to a new segment.
    fn sync_all(&self, durable: bool) -> Result<()> {
        let (active, size, poisoned, generation, ledger) = {
            let st = self.lock();
            let size = st.segments.get(&st.active).map_or(0, |s| s.size);
            let dirty = st.ledger_gen > self.ledger_written_gen.load(Ordering::Acquire);
            let ledger = dirty.then(|| st.ledger(&self.config).encode());
            let poisoned = st.poisoned.contains_key(&st.active);
            (st.active, size, poisoned, st.ledger_gen, ledger)
        };
        if durable && !poisoned {
            self.sync_upto(active, size)?;
        }
        if let Some(ledger) = ledger {
            let written = self.write_ledger(generation, &ledger, durable);
            self.count_error(&written);
            written?;
        }
        Ok(())
    }

    fn count_error<T>(&self, result: &Result<T>) {
        if result.is_err() {
            self.storage_errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The durable [`Queue`]. See the module documentation for the format and the guarantees.
#[derive(Debug)]
pub struct DiskQueue {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
    preparer: Option<JoinHandle<()>>,
    reaper: Option<JoinHandle<()>>,
}

impl DiskQueue {
    /// Opens (or creates) the queue in `options.dir`: takes the directory's lock, recovers what
    /// the segments hold and starts a new active segment.
    pub fn open(options: DiskOptions) -> Result<Self> {
        let config = check_options(options)?;
        fs::create_dir_all(&config.dir).map_err(|e| storage(format_args!("creating {}", config.dir.display()), e))?;
        let lock_file = lock_dir(&config.dir)?;
        let (state, report) = recover(&config)?;
        let generation = state.ledger_gen;
        let ledger = state.ledger(&config).encode();
        let shared = Arc::new(Shared {
            config,
            state: Mutex::new(state),
            syncing: Mutex::new(()),
            ledger_written: Mutex::new(LedgerWriter::default()),
            ledger_written_gen: AtomicU64::new(0),
            stop: Mutex::new(false),
            stop_wake: Condvar::new(),
            waiting: Arc::new(WaitQueue::default()),
            read_errors: AtomicU64::new(0),
            damaged_entries: AtomicU64::new(0),
            storage_errors: AtomicU64::new(0),
            prealloc_errors: AtomicU64::new(0),
            data_syncs: AtomicU64::new(0),
            data_sync_us: AtomicU64::new(0),
            synced_waiters: AtomicU64::new(0),
            ledger_writes: AtomicU64::new(0),
            prep: Mutex::new(Prep::default()),
            prep_wake: Condvar::new(),
            reap: Mutex::new(Reap::default()),
            reap_wake: Condvar::new(),
            report,
            _lock: lock_file,
        });
        // Records what recovery decided (removed exporters gone, positions of new ones). A
        // failure is counted and left to the next write, as after an ack: the queue opens to
        // deliver what it holds (recovery decides the same again should it not be written).
        let written = shared.write_ledger(generation, &ledger, shared.config.fsync.durable());
        shared.count_error(&written);
        let flusher = match shared.config.fsync {
            Fsync::Interval(every) => {
                let shared = Arc::clone(&shared);
                let handle = thread::Builder::new()
                    .name("trackgate-queue-fsync".into())
                    .spawn(move || run_flusher(&shared, every))
                    .map_err(|e| storage("starting the fsync thread", e))?;
                Some(handle)
            }
            _ => None,
        };
        if shared.config.fsync == Fsync::Always {
            // Holds only a weak reference: dropping the queue never waits for this thread (whose
            // sinks may need a lock the dropping thread holds, such as Python's GIL).
            let (weak, waiting) = (Arc::downgrade(&shared), Arc::clone(&shared.waiting));
            thread::Builder::new()
                .name("trackgate-queue-sync".into())
                .spawn(move || run_syncer(&weak, &waiting))
                .map_err(|e| storage("starting the sync thread", e))?;
        }
        let preparer = if shared.config.preallocate {
            let shared = Arc::clone(&shared);
            let handle = thread::Builder::new()
                .name("trackgate-queue-prealloc".into())
                .spawn(move || run_preparer(&shared))
                .map_err(|e| storage("starting the segment preallocation thread", e))?;
            Some(handle)
        } else {
            None
        };
        let reaper = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name("trackgate-queue-reap".into())
                .spawn(move || run_reaper(&shared))
                .map_err(|e| storage("starting the segment deletion thread", e))?
        };
        Ok(DiskQueue {
            shared,
            flusher,
            preparer,
            reaper: Some(reaper),
        })
    }

    pub fn report(&self) -> RecoveryReport {
        self.shared.report
    }

    pub fn dir(&self) -> &Path {
        &self.shared.config.dir
    }

    /// Reads one payload back, trying again on failure; every failed read is counted.
    fn read_with_retries(
        &self,
        file: &File,
        offset: u64,
        stored: u32,
        signal: Signal,
        info: &EntryInfo,
    ) -> std::result::Result<Payload, ReadFailure> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match read_payload(&self.shared.config.io, file, offset, signal, info.seq, stored) {
                Ok(payload) => return Ok(Payload::from(payload)),
                Err(failure) => {
                    if matches!(failure, ReadFailure::Io(_)) {
                        self.shared.read_errors.fetch_add(1, Ordering::Relaxed);
                    }
                    if attempt >= READ_ATTEMPTS {
                        return Err(failure);
                    }
                }
            }
        }
    }

    fn exporter_index(&self, name: &str) -> Result<usize> {
        let exporters = &self.shared.config.exporters;
        exporters
            .iter()
            .position(|e| e == name)
            .ok_or_else(|| unknown_exporter(name, exporters))
    }
}

/// Prepares the next segment when an append asks for it (`State::want_spare`), off the request
/// path, and hands it over through the state. A failure is counted and not retried until the
/// next roll; that roll then makes a growing segment, as before preallocation.
fn run_preparer(shared: &Shared) {
    loop {
        {
            let mut prep = lock(&shared.prep);
            while !prep.requested && !prep.stopped {
                prep = shared.prep_wake.wait(prep).unwrap_or_else(PoisonError::into_inner);
            }
            if prep.stopped {
                return;
            }
            prep.requested = false;
        }
        let prepared = prepare_spare(&shared.config, &|| lock(&shared.prep).stopped);
        let mut st = shared.lock();
        st.preparing = false;
        match prepared {
            Ok(file) => st.spare = Some(file),
            Err(e) if e.kind() == ErrorKind::Interrupted => return,
            Err(_) => {
                st.spare_failed_for = Some(st.active);
                shared.prealloc_errors.fetch_add(1, Ordering::Relaxed);
                shared.storage_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Shared {
    /// Wakes the preparer (called without the state lock).
    fn request_spare(&self) {
        lock(&self.prep).requested = true;
        self.prep_wake.notify_one();
    }

    /// Hands dead segment files to the reaper (called without the state lock).
    fn reap(&self, paths: Vec<PathBuf>) {
        if !paths.is_empty() {
            lock(&self.reap).files.extend(paths);
            self.reap_wake.notify_one();
        }
    }
}

fn run_flusher(shared: &Shared, every: Duration) {
    let mut stopped = lock(&shared.stop);
    while !*stopped {
        stopped = shared
            .stop_wake
            .wait_timeout(stopped, every)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        if *stopped {
            break;
        }
        drop(stopped);
        // Counted where it failed; the next interval tries again.
        let _ = shared.sync_all(true);
        stopped = lock(&shared.stop);
    }
}

/// Group commit for deferred appends: takes every waiter queued so far, fsyncs each segment
/// they wrote to once (up to the furthest of them), and tells each sink once per group.
fn run_syncer(shared: &std::sync::Weak<Shared>, queue: &WaitQueue) {
    loop {
        let (group, stopped) = {
            let mut waiting = lock(&queue.state);
            while waiting.list.is_empty() && !waiting.stopped {
                waiting.asleep = true;
                waiting = queue.wake.wait(waiting).unwrap_or_else(PoisonError::into_inner);
                waiting.asleep = false;
            }
            (std::mem::take(&mut waiting.list), waiting.stopped)
        };
        let sh = shared.upgrade().filter(|_| !stopped);
        let Some(sh) = sh else {
            // Closing: whatever the drop's final sync does, these requests are not acknowledged.
            settle_group(group, |_| Err(CoreError::Closed));
            return;
        };
        sh.synced_waiters.fetch_add(group.len() as u64, Ordering::Relaxed);
        let mut furthest: BTreeMap<u64, u64> = BTreeMap::new();
        for w in &group {
            let end = furthest.entry(w.point.segment).or_default();
            *end = (*end).max(w.point.end);
        }
        let synced: BTreeMap<u64, bool> = furthest
            .into_iter()
            .map(|(id, end)| (id, sh.sync_upto(id, end).is_ok()))
            .collect();
        settle_group(group, |point| {
            if synced.get(&point.segment) == Some(&true) {
                Ok(())
            } else {
                // Failed: asking again answers from what is known (an earlier sync may have
                // covered this waiter; one that failed before covering it fails it for good).
                sh.sync_upto(point.segment, point.end)
            }
        });
        drop(sh);
    }
}

/// What one sink is told: (token, outcome) per waiter.
type Outcomes = Vec<(u64, Result<()>)>;

/// Tells each sink of `group` the outcome of its waiters, once per sink.
fn settle_group(group: Vec<Waiter>, mut outcome: impl FnMut(SyncPoint) -> Result<()>) {
    let mut by_sink: Vec<(Arc<dyn DurableSink>, Outcomes)> = Vec::new();
    for w in group {
        let result = outcome(w.point);
        match by_sink.iter_mut().find(|(sink, _)| Arc::ptr_eq(sink, &w.sink)) {
            Some((_, results)) => results.push((w.token, result)),
            None => by_sink.push((w.sink, vec![(w.token, result)])),
        }
    }
    for (sink, results) in by_sink {
        sink.deliver(results);
    }
}

impl Drop for DiskQueue {
    fn drop(&mut self) {
        lock(&self.shared.waiting.state).stopped = true;
        self.shared.waiting.wake.notify_all();
        *lock(&self.shared.stop) = true;
        self.shared.stop_wake.notify_all();
        lock(&self.shared.prep).stopped = true;
        self.shared.prep_wake.notify_all();
        if let Some(handle) = self.flusher.take() {
            let _ = handle.join();
        }
        // It stops within one chunk of zeros; the lock on the directory outlives it.
        if let Some(handle) = self.preparer.take() {
            let _ = handle.join();
        }
        if lock(&self.shared.state).spare.take().is_some() {
            let _ = fs::remove_file(self.shared.config.dir.join(SPARE_FILE));
        }
        lock(&self.shared.reap).stopped = true;
        self.shared.reap_wake.notify_all();
        if let Some(handle) = self.reaper.take() {
            let _ = handle.join();
        }
        let _ = self.shared.sync_all(self.shared.config.fsync.durable());
        // After the ledger, as when running; what the reaper had not got to goes at once.
        let mut doomed = std::mem::take(&mut lock(&self.shared.reap).files);
        doomed.extend(lock(&self.shared.state).take_unlink());
        unlink(doomed);
    }
}

fn check_options(options: DiskOptions) -> Result<Config> {
    check_exporters(&options.exporters)?;
    let min = (SEGMENT_HEADER + FRAME_HEADER + 1) as u64;
    if options.max_bytes < min {
        return Err(CoreError::Usage(format!(
            "queue_max_bytes must be at least {min} for a disk queue"
        )));
    }
    if !(MIN_SEGMENT_BYTES..=MAX_SEGMENT_BYTES).contains(&options.segment_bytes) {
        return Err(CoreError::Usage(format!(
            "segment_bytes must be between {MIN_SEGMENT_BYTES} and {MAX_SEGMENT_BYTES}"
        )));
    }
    if options.fsync == Fsync::Interval(Duration::ZERO) {
        return Err(CoreError::Usage("fsync_interval_ms must be at least 1".into()));
    }
    let mut limits = vec![ExporterLimit::default(); options.exporters.len()];
    let mut seen = Vec::new();
    for (name, limit) in options.limits {
        let Some(x) = options.exporters.iter().position(|e| *e == name) else {
            return Err(CoreError::Usage(format!(
                "exporter_limits names {name:?}, which is not a configured exporter"
            )));
        };
        if seen.contains(&x) {
            return Err(CoreError::Usage(format!("exporter_limits names {name:?} twice")));
        }
        if limit.max_bytes == Some(0) {
            return Err(CoreError::Usage(format!(
                "exporter_limits[{name:?}] max_bytes must be at least 1"
            )));
        }
        seen.push(x);
        limits[x] = limit;
    }
    Ok(Config {
        dir: options.dir,
        exporters: options.exporters,
        max_bytes: options.max_bytes,
        segment_bytes: options.segment_bytes,
        fsync: options.fsync,
        cache_bytes: options.cache_bytes,
        limits,
        preallocate: options.preallocate,
        compress: options.compress,
        io: Io {
            #[cfg(test)]
            faults: options.faults,
        },
    })
}

fn lock_dir(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| storage(format_args!("opening {}", path.display()), e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(CoreError::Locked(format!(
            "queue directory {} is in use by another process (each process needs its own)",
            dir.display()
        ))),
        Err(TryLockError::Error(e)) => Err(storage(format_args!("locking {}", path.display()), e)),
    }
}

struct Recovered {
    id: u64,
    path: PathBuf,
    file: File,
    size: u64,
    scan: SegmentScan,
}

/// The segments that read back, and the highest segment id any file name holds (set-aside
/// segments' too, so that no new segment takes their id).
fn read_segments(config: &Config, report: &mut RecoveryReport) -> Result<(Vec<Recovered>, u64)> {
    let dir = &config.dir;
    let listing = fs::read_dir(dir).map_err(|e| storage(format_args!("listing {}", dir.display()), e))?;
    let mut ids = Vec::new();
    let mut highest = 0;
    for entry in listing {
        let entry = entry.map_err(|e| storage(format_args!("listing {}", dir.display()), e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = segment_id(name) {
            ids.push(id);
        } else if let Some(id) = name
            .strip_suffix(UNREADABLE_EXTENSION)
            .and_then(|n| n.strip_suffix('.'))
            .and_then(segment_id_stem)
        {
            highest = highest.max(id);
        }
    }
    highest = highest.max(ids.iter().copied().max().unwrap_or(0));
    ids.sort_unstable();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let path = segment_path(dir, id);
        let context = || format!("reading {}", path.display());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| storage(context(), e))?;
        let len = file.metadata().map_err(|e| storage(context(), e))?.len();
        if len > MAX_SEGMENT_BYTES + (u32::MAX as u64) + FRAME_HEADER as u64 {
            return Err(CoreError::Storage(format!(
                "{} is {len} bytes, larger than any segment this queue writes",
                path.display()
            )));
        }
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        if let Err(e) = config.io.read_exact_at(&file, &mut buf, 0) {
            // A bad sector: one segment, not the whole queue. Set aside (no open reads it
            // again), it lets the rest open and be delivered; its frames are lost to the queue
            // (exporters whose acks were past them start over at the oldest entry).
            // Other errors (permissions, too many open files) are not the data's: the open fails.
            if !is_media_error(&e) {
                return Err(storage(context(), e));
            }
            fs::rename(&path, path.with_extension(UNREADABLE_EXTENSION)).map_err(|e| storage(context(), e))?;
            report.unreadable_segments += 1;
            continue;
        }
        let mut scan = scan_segment(&buf);
        drop(buf);
        report.segments += 1;
        if scan
            .header
            .is_some_and(|h| h.id != id || h.starts.iter().any(|&s| s == 0 || s > MAX_SEQ + 1))
        {
            scan.header = None;
        }
        // All zeros: a preallocated segment whose header never reached the disk, so it never
        // took a frame either (the header is synced first).
        if scan.header.is_none() && len >= SEGMENT_HEADER as u64 && scan.data_end > 0 {
            report.bad_headers += 1;
        }
        report.skipped_bytes = report.skipped_bytes.saturating_add(scan.skipped_bytes);
        report.skipped_regions = report.skipped_regions.saturating_add(scan.skipped_regions);
        // What was written, not the preallocated length: the zero tail is no data.
        let mut size = scan
            .data_end
            .max(scan.frames.last().map_or(0, |(h, at)| at + h.frame_len()));
        if let Some(cut) = scan.cut_at {
            file.set_len(cut)
                .and_then(|()| {
                    if config.fsync.durable() {
                        file.sync_data()
                    } else {
                        Ok(())
                    }
                })
                .map_err(|e| storage(format_args!("truncating {}", path.display()), e))?;
            // Only the damaged bytes count; the zeros after them were never written.
            report.cut_bytes = report.cut_bytes.saturating_add(scan.data_end.max(cut) - cut);
            report.cut_segments += 1;
            size = cut;
        }
        out.push(Recovered {
            id,
            path,
            file,
            size,
            scan,
        });
    }
    Ok((out, highest))
}

/// Keeps the frames whose seq fits their segment: each signal's seqs in a segment run on from
/// the header's start, one per frame at most, and stay below where the next segment with a
/// header starts. Returns how many were dropped. A frame without a header to check it against
/// is still held to [`MAX_SEQ`].
fn drop_implausible(segments: &mut [Recovered]) -> u64 {
    let mut dropped = 0;
    let mut next: Option<SegmentHeader> = None;
    for seg in segments.iter_mut().rev() {
        let room = seg.size.saturating_sub(SEGMENT_HEADER as u64) / FRAME_HEADER as u64;
        let bounds: [(Seq, Seq); 3] = std::array::from_fn(|s| {
            let (lo, mut hi) = match seg.scan.header {
                Some(h) => (h.starts[s], h.starts[s].saturating_add(room)),
                None => (1, MAX_SEQ + 1),
            };
            if let Some(n) = next {
                hi = hi.min(n.starts[s]);
            }
            (lo, hi.min(MAX_SEQ + 1))
        });
        let before = seg.scan.frames.len();
        seg.scan.frames.retain(|(h, _)| {
            let (lo, hi) = bounds[h.signal.index()];
            (lo..hi).contains(&h.seq)
        });
        dropped += (before - seg.scan.frames.len()) as u64;
        next = seg.scan.header.or(next);
    }
    dropped
}

/// Frames missing from damaged segments, from the seqs their headers say they start at.
fn count_lost(segments: &[Recovered]) -> u64 {
    let mut lost = 0;
    for (i, seg) in segments.iter().enumerate() {
        let scan = &seg.scan;
        let Some(header) = scan.header else {
            continue;
        };
        if scan.skipped_regions == 0 && scan.cut_at.is_none() {
            continue;
        }
        let next = segments
            .get(i + 1)
            .filter(|n| Some(n.id) == seg.id.checked_add(1))
            .and_then(|n| n.scan.header);
        for signal in Signal::ALL {
            let s = signal.index();
            let seqs = scan
                .frames
                .iter()
                .filter(|(h, _)| h.signal == signal)
                .map(|(h, _)| h.seq);
            let (count, max) = seqs.fold((0u64, None), |(n, m), seq| (n + 1, m.max(Some(seq))));
            let end = match (next, max) {
                (Some(n), _) => n.starts[s],
                (None, Some(max)) => max.saturating_add(1),
                (None, None) => header.starts[s],
            };
            lost = end
                .saturating_sub(header.starts[s])
                .saturating_sub(count)
                .saturating_add(lost);
        }
    }
    lost
}

/// Rebuilds the index from the segments and the ledger, deletes what nobody needs, and starts a
/// new active segment.
fn recover(config: &Config) -> Result<(State, RecoveryReport)> {
    let mut report = RecoveryReport::default();
    let ledger = match fs::read(config.dir.join(LEDGER_FILE)) {
        Ok(bytes) => {
            let ledger = ledger_file::read_body(&bytes, &LEDGER_MAGIC).and_then(Ledger::decode);
            report.ledger_corrupt = u64::from(ledger.is_none());
            report.ledger_torn = u64::from(ledger.is_some() && ledger_file::torn_slot(&bytes, &LEDGER_MAGIC));
            ledger
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            report.ledger_missing = 1;
            None
        }
        // Read back as damaged: the next ledger write makes a new file.
        Err(e) if is_media_error(&e) => {
            report.ledger_unreadable = 1;
            None
        }
        Err(e) => return Err(storage("reading the queue ledger", e)),
    };
    let _ = fs::remove_file(config.dir.join(LEDGER_TMP));
    // A spare left by a crash may be partly written: the preparer makes a new one.
    let _ = fs::remove_file(config.dir.join(SPARE_FILE));
    remove_dead(&config.dir);
    let (mut recovered, highest_id) = read_segments(config, &mut report)?;
    // A new queue has neither; segments without a ledger lost it.
    report.ledger_missing &= u64::from(!recovered.is_empty());
    report.skipped_frames = drop_implausible(&mut recovered);
    report.lost_frames = count_lost(&recovered);

    let mut lanes: [Lane; 3] = Default::default();
    let mut segments = BTreeMap::new();
    let (now, now_ms) = (Instant::now(), unix_ms());
    let mut header_last = [0u64; 3];
    let mut max_id = 0;
    for seg in recovered {
        max_id = max_id.max(seg.id);
        if let Some(h) = seg.scan.header {
            for (last, start) in header_last.iter_mut().zip(h.starts) {
                *last = (*last).max(start.saturating_sub(1));
            }
        }
        let mut frames = 0;
        for (h, offset) in &seg.scan.frames {
            let lane = &mut lanes[h.signal.index()];
            if lane.metas.back().is_some_and(|m| m.seq >= h.seq) || h.seq == 0 {
                report.skipped_frames += 1;
                continue;
            }
            // Bounded so that sums over entries (here and in batching) cannot overflow, whatever a
            // file says.
            let records = h.records.min(u64::from(u32::MAX));
            lane.total_records = lane.total_records.saturating_add(records);
            lane.total_bytes = lane.total_bytes.saturating_add(u64::from(h.raw_len));
            let age = Duration::from_millis(now_ms.saturating_sub(h.appended_ms));
            lane.metas.push_back(Meta {
                seq: h.seq,
                records,
                len: h.raw_len,
                stored: h.len,
                segment: seg.id,
                offset: *offset,
                appended: now.checked_sub(age).unwrap_or(now),
                needers: 0,
                total_records: lane.total_records,
                total_bytes: lane.total_bytes,
                cached: None,
            });
            frames += 1;
            report.frames += 1;
            report.records = report.records.saturating_add(records);
            report.bytes = report.bytes.saturating_add(u64::from(h.raw_len));
        }
        segments.insert(
            seg.id,
            Segment {
                path: seg.path,
                file: Arc::new(seg.file),
                size: seg.size,
                durable: seg.size,
                frames,
                live: 0,
                preallocated: false,
            },
        );
    }

    // Seqs continue after every frame and header. A ledger position past all of them is not
    // believed (its frames are gone, or it is from elsewhere): reported, and the exporter starts
    // over at the oldest entry. Clamped to the lane, no ledger position covers a new entry.
    for signal in Signal::ALL {
        let s = signal.index();
        let lane = &mut lanes[s];
        lane.last = header_last[s].max(lane.metas.back().map_or(0, |m| m.seq));
        if let Some(ledger) = &ledger {
            let ahead = ledger
                .acked
                .iter()
                .filter(|(name, sig, _)| *sig == signal && config.exporters.contains(name))
                .map(|(_, _, acked)| *acked)
                .chain([ledger.last[s]])
                .filter(|&seq| seq > lane.last)
                .count();
            report.ledger_ahead += ahead as u64;
        }
    }

    if let Some(ledger) = &ledger {
        report.ledger_ignored = ledger
            .acked
            .iter()
            .filter(|(name, _, _)| !config.exporters.contains(name))
            .count() as u64;
    }
    for (s, lane) in lanes.iter_mut().enumerate() {
        let oldest = lane.metas.front().map_or(lane.last, |m| m.seq.saturating_sub(1));
        for name in &config.exporters {
            // No ledger entry (new exporter, lost ledger): start at the oldest retained entry.
            let stored = ledger
                .iter()
                .flat_map(|l| &l.acked)
                .find(|(n, sig, _)| n == name && sig.index() == s)
                .map_or(0, |(_, _, seq)| *seq);
            let stored = if stored > lane.last { 0 } else { stored };
            let acked = stored.max(oldest).min(lane.last);
            let i = lane.after(acked);
            let (read_records, read_bytes) = match i.checked_sub(1).and_then(|j| lane.metas.get(j)) {
                Some(m) => (m.total_records, m.total_bytes),
                None => (0, 0),
            };
            let need_bytes = lane.metas.iter().skip(i).map(|m| u64::from(m.len)).sum();
            for meta in lane.metas.iter_mut().skip(i) {
                meta.needers += 1;
            }
            lane.cursors.push(Cursor {
                read: acked,
                read_records,
                read_bytes,
                acked,
                need_bytes,
                ..Cursor::default()
            });
        }
        for meta in &lane.metas {
            if meta.needers > 0 {
                lane.held_records = lane.held_records.saturating_add(meta.records);
                lane.held_bytes += u64::from(meta.len);
                if let Some(seg) = segments.get_mut(&meta.segment) {
                    seg.live += 1;
                }
            }
        }
        report.pending_entries += lane.metas.iter().filter(|m| m.needers > 0).count() as u64;
        report.pending_records = report.pending_records.saturating_add(lane.held_records);
    }

    let used = segments.values().map(|s| s.size).sum();
    let dead = segments
        .iter()
        .filter(|(_, s)| s.live == 0)
        .map(|(id, _)| *id)
        .collect();
    let mut state = State {
        lanes,
        segments,
        active: max_id,
        used,
        cache: Cache::default(),
        ledger_gen: 1,
        dead,
        unlink: Vec::new(),
        poisoned: BTreeMap::new(),
        spare: None,
        preparing: false,
        spare_failed_for: None,
        spares_used: 0,
    };
    // What nothing needs goes first: on a full disk, that space is what lets the new active
    // segment (and the ledger) be written.
    let mut removed = state.settle();
    unlink(state.take_unlink());
    let id = next_id(max_id.max(highest_id))?;
    match create_segment(config, id, state.starts(), None) {
        Ok(active) => {
            state.used += active.size;
            state.segments.insert(id, active);
        }
        // Still no room, or the disk refuses writes: open all the same, so that what is queued
        // is delivered (which frees the disk). The active id has no file, so the next append
        // rolls to a new segment, and fails (503) until one can be written.
        Err(_) if !state.segments.is_empty() => report.no_active_segment = 1,
        Err(e) => return Err(e),
    }
    // Every recovered segment is older than the active one, so settle deletes the unneeded.
    state.active = id;
    removed += state.settle();
    report.removed_segments = removed;
    unlink(state.take_unlink());
    Ok((state, report))
}

impl Queue for DiskQueue {
    fn exporters(&self) -> &[String] {
        &self.shared.config.exporters
    }

    fn append(&self, signal: Signal, records: u64, payload: Payload) -> Result<Seq> {
        let (seq, point) = self.append_deferred(signal, records, payload)?;
        if let Some(point) = point {
            self.sync_point(point)?;
        }
        Ok(seq)
    }

    fn append_deferred(&self, signal: Signal, records: u64, payload: Payload) -> Result<(Seq, Option<SyncPoint>)> {
        let sh = &*self.shared;
        let config = &sh.config;
        let limit = usize::try_from(config.max_bytes).unwrap_or(usize::MAX);
        let now = Instant::now();
        // Compressed and checksummed before taking the lock.
        let packed = config.compress.then(|| lz4_pack(&payload)).flatten();
        let (header, stored) = match &packed {
            Some(block) => match FrameHeader::lz4(signal, 0, records, unix_ms(), payload.len(), block) {
                Some(h) => (Some(h), &block[..]),
                None => (FrameHeader::new(signal, 0, records, unix_ms(), &payload), &payload[..]),
            },
            None => (FrameHeader::new(signal, 0, records, unix_ms(), &payload), &payload[..]),
        };
        let frame_len = FRAME_HEADER as u64 + stored.len() as u64;
        let Some(mut header) = header.filter(|_| frame_len + SEGMENT_HEADER as u64 <= config.max_bytes) else {
            return Err(CoreError::TooLarge { limit });
        };
        let l = signal.index();
        let (id, end, seq, kick, doomed) = loop {
            let mut st = sh.lock();
            st.enforce_all(config, now);
            st.settle();
            // A segment that must be synced before it rolls is synced without the lock, then
            // everything is looked at again.
            let mut sync_first = None;
            if !st.fits(config, frame_len) {
                let reclaimed = st.reclaim(config, true);
                sh.count_error(&reclaimed);
                sync_first = reclaimed?;
                if sync_first.is_none() && !st.fits(config, frame_len) {
                    let full = CoreError::QueueFull {
                        used: usize::try_from(st.used).unwrap_or(usize::MAX),
                        limit,
                    };
                    let doomed = st.take_unlink();
                    drop(st);
                    sh.reap(doomed);
                    return Err(full);
                }
            }
            if sync_first.is_none() && st.needs_roll(config, frame_len) {
                sync_first = st.unsynced_active(config);
                if sync_first.is_none() {
                    let rolled = st.roll(config);
                    sh.count_error(&rolled);
                    rolled?;
                }
            }
            if let Some((id, size)) = sync_first {
                drop(st);
                sh.sync_upto(id, size)?;
                continue;
            }
            let Some(seq) = st.lanes[l].last.checked_add(1) else {
                return Err(CoreError::Storage(format!("{signal} seqs are exhausted")));
            };
            header.seq = seq;
            let id = st.active;
            let Some(seg) = st.segments.get_mut(&id) else {
                return Err(CoreError::Storage("the active queue segment is missing".into()));
            };
            let offset = seg.size;
            let written = seg
                .file
                .write_all_at(&header.encode(), offset)
                .and_then(|()| seg.file.write_all_at(stored, offset + FRAME_HEADER as u64));
            if let Err(e) = written {
                // Cut the partial frame so the next append does not follow garbage.
                let _ = seg.file.set_len(offset);
                sh.storage_errors.fetch_add(1, Ordering::Relaxed);
                return Err(storage(format_args!("writing {}", seg.path.display()), e));
            }
            seg.size += frame_len;
            seg.frames += 1;
            seg.live += 1;
            let end = seg.size;
            st.used += frame_len;
            let lane = &mut st.lanes[l];
            lane.last = seq;
            lane.total_records = lane.total_records.saturating_add(records);
            lane.total_bytes += u64::from(header.raw_len);
            lane.held_records = lane.held_records.saturating_add(records);
            lane.held_bytes += u64::from(header.raw_len);
            for c in &mut lane.cursors {
                c.need_bytes += u64::from(header.raw_len);
            }
            let meta = Meta {
                seq,
                records,
                len: header.raw_len,
                stored: header.len,
                segment: id,
                offset,
                appended: now,
                needers: u32::try_from(config.exporters.len()).unwrap_or(u32::MAX),
                total_records: lane.total_records,
                total_bytes: lane.total_bytes,
                cached: None,
            };
            lane.metas.push_back(meta);
            st.cache_insert(config, l, seq, &payload);
            st.enforce_all(config, now);
            st.settle();
            break (id, end, seq, st.want_spare(config), st.take_unlink());
        };
        sh.reap(doomed);
        if kick {
            sh.request_spare();
        }
        let point = (config.fsync == Fsync::Always).then_some(SyncPoint { segment: id, end });
        Ok((seq, point))
    }

    fn sync_point(&self, point: SyncPoint) -> Result<()> {
        self.shared.sync_upto(point.segment, point.end)
    }

    fn when_durable(&self, point: SyncPoint, sink: Arc<dyn DurableSink>, token: u64) {
        let mut waiting = lock(&self.shared.waiting.state);
        if waiting.stopped {
            drop(waiting);
            sink.deliver(vec![(token, Err(CoreError::Closed))]);
            return;
        }
        waiting.list.push(Waiter { point, sink, token });
        // Once per sleep: the waiters after the first find the syncer awake.
        let wake = std::mem::take(&mut waiting.asleep);
        drop(waiting);
        if wake {
            self.shared.waiting.wake.notify_one();
        }
    }

    fn pending(&self, exporter: &str, signal: Signal) -> Result<Pending> {
        let x = self.exporter_index(exporter)?;
        let l = signal.index();
        let sh = &*self.shared;
        let mut st = sh.lock();
        if sh.config.limits[x].max_age.is_some() {
            st.enforce(&sh.config, x, Instant::now(), &[l]);
            st.settle();
        }
        let lane = &st.lanes[l];
        let c = &lane.cursors[x];
        let i = lane.after(c.read);
        let pending = Pending {
            entries: (lane.metas.len() - i) as u64,
            records: lane.total_records.saturating_sub(c.read_records),
            bytes: lane.total_bytes.saturating_sub(c.read_bytes),
            oldest: lane.metas.get(i).map(|m| m.appended),
        };
        let doomed = st.take_unlink();
        drop(st);
        sh.reap(doomed);
        Ok(pending)
    }

    fn read(&self, exporter: &str, signal: Signal, visit: &mut dyn FnMut(&EntryInfo) -> bool) -> Result<()> {
        let x = self.exporter_index(exporter)?;
        let st = self.shared.lock();
        let lane = &st.lanes[signal.index()];
        for m in lane.metas.iter().skip(lane.after(lane.cursors[x].read)) {
            let info = EntryInfo {
                seq: m.seq,
                records: m.records,
                len: m.len as usize,
                appended: m.appended,
            };
            if !visit(&info) {
                break;
            }
        }
        Ok(())
    }

    /// Reads cache misses outside the lock, and moves the read cursor only past what came back.
    /// A payload the disk fails to return (after [`READ_ATTEMPTS`]) ends the batch there; when
    /// it is the first, `take` fails with the cursor where it was, so nothing unread is handed
    /// out or acked and the next `take` tries again. Entries that read back damaged, or that an
    /// fsync failure kept from ever being reported durable and cannot be read, are handed out
    /// empty and counted: nothing would bring them back.
    fn take(&self, exporter: &str, signal: Signal, upto: Seq) -> Result<Vec<Entry>> {
        let x = self.exporter_index(exporter)?;
        let l = signal.index();
        let sh = &*self.shared;
        enum Source {
            Cached(Payload),
            Disk(Arc<File>, u64, u32),
            Missing,
        }
        struct Planned {
            info: EntryInfo,
            source: Source,
            /// Lane totals up to and including the entry, for the cursor.
            totals: (u64, u64),
            /// No client was told it is on disk (an fsync failed before covering it).
            unacknowledged: bool,
        }
        let plan: Vec<Planned> = {
            let mut st = sh.lock();
            let State {
                lanes,
                segments,
                poisoned,
                ..
            } = &mut *st;
            let lane = &mut lanes[l];
            let cursor = &lane.cursors[x];
            // Two takes for one cursor at once: the batcher never does this.
            if cursor.reading {
                return Ok(Vec::new());
            }
            let (from, to) = (lane.after(cursor.read), lane.after(upto));
            if upto <= cursor.read || to <= from {
                return Ok(Vec::new());
            }
            let plan = lane
                .metas
                .range(from..to)
                .map(|m| Planned {
                    info: EntryInfo {
                        seq: m.seq,
                        records: m.records,
                        len: m.len as usize,
                        appended: m.appended,
                    },
                    source: match (&m.cached, segments.get(&m.segment)) {
                        (Some(p), _) => Source::Cached(p.clone()),
                        (None, Some(seg)) => Source::Disk(Arc::clone(&seg.file), m.offset, m.stored),
                        (None, None) => Source::Missing,
                    },
                    totals: (m.total_records, m.total_bytes),
                    unacknowledged: poisoned
                        .get(&m.segment)
                        .is_some_and(|&on_disk| m.offset + FRAME_HEADER as u64 + u64::from(m.stored) > on_disk),
                })
                .collect();
            lane.cursors[x].reading = true;
            plan
        };
        let mut entries = Vec::with_capacity(plan.len());
        let mut totals = None;
        let mut failure = None;
        for planned in plan {
            let Planned {
                info,
                source,
                totals: entry_totals,
                unacknowledged,
            } = planned;
            let payload = match source {
                Source::Cached(p) => Ok(p),
                Source::Disk(file, offset, stored) => self.read_with_retries(&file, offset, stored, signal, &info),
                Source::Missing => Err(ReadFailure::Damaged),
            };
            let (payload, records) = match payload {
                Ok(payload) => (payload, info.records),
                Err(ReadFailure::Io(e)) if !unacknowledged => {
                    failure = Some((info.seq, e));
                    break;
                }
                Err(_) => {
                    sh.damaged_entries.fetch_add(1, Ordering::Relaxed);
                    (Payload::from(Vec::new()), 0)
                }
            };
            entries.push(Entry {
                seq: info.seq,
                records,
                payload,
                appended: info.appended,
            });
            totals = Some(entry_totals);
        }
        {
            let mut st = sh.lock();
            let c = &mut st.lanes[l].cursors[x];
            c.reading = false;
            if let (Some(last), Some((records, bytes))) = (entries.last(), totals) {
                c.read = last.seq;
                c.read_records = records;
                c.read_bytes = bytes;
            }
            c.read_failed = failure.as_ref().map(|(seq, _)| *seq);
        }
        match failure {
            Some((seq, e)) if entries.is_empty() => Err(storage(
                format_args!("reading {signal} entry {seq} back from the queue"),
                e,
            )),
            _ => Ok(entries),
        }
    }

    fn ack(&self, exporter: &str, signal: Signal, upto: Seq) -> Result<()> {
        let x = self.exporter_index(exporter)?;
        let l = signal.index();
        let sh = &*self.shared;
        let (ledger, sync_first, doomed) = {
            let mut st = sh.lock();
            let c = &st.lanes[l].cursors[x];
            if upto <= c.acked {
                return Ok(());
            }
            if upto > c.read {
                return Err(CoreError::Usage(format!(
                    "exporter {exporter:?} acked {signal} entry {upto} but was only handed up to {}",
                    c.read
                )));
            }
            st.ack(l, x, upto);
            st.settle();
            let reclaimed = st.reclaim(&sh.config, false);
            sh.count_error(&reclaimed);
            let ledger = match sh.config.fsync {
                Fsync::Interval(_) => None,
                _ => Some((st.ledger_gen, st.ledger(&sh.config).encode())),
            };
            (ledger, reclaimed.ok().flatten(), st.take_unlink())
        };
        // The ack stands in memory either way; a ledger that could not be written means
        // redelivery after a restart, not loss, so it is counted rather than raised (raising
        // would stop the exporter's delivery loop).
        if let Some((generation, ledger)) = ledger {
            sh.count_error(&sh.write_ledger(generation, &ledger, sh.config.fsync.durable()));
        }
        // After the ledger (under `always` and `never`; `interval` writes it later): a crash in
        // between leaves files whose frames the ledger shows acked.
        sh.reap(doomed);
        // The delivered active segment was not on disk yet: sync it, then try once more.
        if let Some((id, size)) = sync_first {
            if sh.sync_upto(id, size).is_ok() {
                let doomed = {
                    let mut st = sh.lock();
                    let reclaimed = st.reclaim(&sh.config, false);
                    sh.count_error(&reclaimed);
                    st.take_unlink()
                };
                sh.reap(doomed);
            }
        }
        Ok(())
    }

    fn usage(&self) -> Usage {
        let st = self.shared.lock();
        let mut usage = Usage {
            bytes: usize::try_from(st.used).unwrap_or(usize::MAX),
            max_bytes: usize::try_from(self.shared.config.max_bytes).unwrap_or(usize::MAX),
            ..Usage::default()
        };
        for (i, lane) in st.lanes.iter().enumerate() {
            usage.records_by_signal[i] = lane.held_records;
            usage.bytes_by_signal[i] = lane.held_bytes;
        }
        usage
    }

    fn sync(&self) -> Result<()> {
        self.shared.sync_all(true)
    }

    /// `queue_segments`, `queue_read_errors` (failed payload reads), `queue_read_stalled`
    /// (cursors waiting on a payload the disk did not return), `queue_damaged_entries`,
    /// `queue_storage_errors`, and for each exporter with limits
    /// `<exporter>_<signal>_dropped_records` and `..._dropped_entries`.
    fn counters(&self) -> Vec<(String, u64)> {
        let sh = &*self.shared;
        let st = sh.lock();
        let stalled = st
            .lanes
            .iter()
            .flat_map(|lane| &lane.cursors)
            .filter(|c| c.read_failed.is_some_and(|seq| seq > c.read))
            .count();
        let mut out = vec![
            ("queue_segments".to_owned(), st.segments.len() as u64),
            ("queue_segments_preallocated".to_owned(), st.spares_used),
            (
                "queue_prealloc_errors".to_owned(),
                sh.prealloc_errors.load(Ordering::Relaxed),
            ),
            ("queue_read_errors".to_owned(), sh.read_errors.load(Ordering::Relaxed)),
            ("queue_data_syncs".to_owned(), sh.data_syncs.load(Ordering::Relaxed)),
            ("queue_data_sync_us".to_owned(), sh.data_sync_us.load(Ordering::Relaxed)),
            (
                "queue_synced_appends".to_owned(),
                sh.synced_waiters.load(Ordering::Relaxed),
            ),
            (
                "queue_ledger_writes".to_owned(),
                sh.ledger_writes.load(Ordering::Relaxed),
            ),
            ("queue_read_stalled".to_owned(), stalled as u64),
            (
                "queue_damaged_entries".to_owned(),
                sh.damaged_entries.load(Ordering::Relaxed),
            ),
            (
                "queue_storage_errors".to_owned(),
                sh.storage_errors.load(Ordering::Relaxed),
            ),
        ];
        for (x, name) in sh.config.exporters.iter().enumerate() {
            if sh.config.limits[x] == ExporterLimit::default() {
                continue;
            }
            for signal in Signal::ALL {
                let c = &st.lanes[signal.index()].cursors[x];
                out.push((format!("{name}_{signal}_dropped_records"), c.dropped_records));
                out.push((format!("{name}_{signal}_dropped_entries"), c.dropped_entries));
            }
        }
        out
    }

    fn recovery(&self) -> Vec<(&'static str, u64)> {
        self.shared.report.items()
    }
}

/// Fault injection for tests: segment fsyncs and payload reads fail with EIO on command, the way a
/// failing disk answers them (an fsync reports a writeback error once; the next one succeeds).
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// Segment fsyncs to fail, from the next one on.
    pub(crate) syncs: AtomicU64,
    /// Payload reads to fail, from the next one on; `u64::MAX` fails every one.
    pub(crate) reads: AtomicU64,
    /// Segment preparations to fail (as with a full disk), from the next one on.
    pub(crate) preallocs: AtomicU64,
    /// Ledger updates in place to fail (after their write, as their fdatasync would), from the
    /// next one on.
    pub(crate) ledgers: AtomicU64,
    /// While true, segment fsyncs wait before running (to line writers up behind one).
    held: Mutex<bool>,
    released: Condvar,
    /// Fsyncs waiting while held.
    pub(crate) waiting: AtomicU64,
}

#[cfg(test)]
impl Faults {
    pub(crate) fn hold(&self, held: bool) {
        *lock(&self.held) = held;
        self.released.notify_all();
    }

    /// Consumes one failure from `count`.
    fn fail(count: &AtomicU64) -> io::Result<()> {
        let left = count.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
            0 => None,
            u64::MAX => Some(n),
            _ => Some(n - 1),
        });
        match left {
            Ok(_) => Err(io::Error::from_raw_os_error(5)), // EIO
            Err(_) => Ok(()),
        }
    }

    fn before_sync(&self) -> io::Result<()> {
        let mut held = lock(&self.held);
        if *held {
            self.waiting.fetch_add(1, Ordering::SeqCst);
            while *held {
                held = self.released.wait(held).unwrap_or_else(PoisonError::into_inner);
            }
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
        drop(held);
        Self::fail(&self.syncs)
    }

    fn before_read(&self) -> io::Result<()> {
        Self::fail(&self.reads)
    }
}

/// A directory under the system temp dir, removed on drop (tests only).
#[cfg(test)]
pub(crate) struct TempDir(pub PathBuf);

#[cfg(test)]
impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "trackgate-{tag}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

#[cfg(test)]
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
#[path = "disk_queue_prealloc_tests.rs"]
mod prealloc_tests;

#[cfg(test)]
#[path = "disk_queue_compress_tests.rs"]
mod compress_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    fn options(dir: &TempDir, exporters: &[&str]) -> DiskOptions {
        DiskOptions {
            fsync: Fsync::Never,
            preallocate: false,
            ..DiskOptions::new(&dir.0, names(exporters), 1 << 20)
        }
    }

    fn open(options: &DiskOptions) -> DiskQueue {
        DiskQueue::open(options.clone()).unwrap()
    }

    fn payload(fill: u8, len: usize) -> Payload {
        Payload::from(vec![fill; len])
    }

    /// Takes everything pending for `exporter`.
    fn take_all(q: &DiskQueue, exporter: &str, signal: Signal) -> Vec<Entry> {
        q.take(exporter, signal, Seq::MAX).unwrap()
    }

    fn seqs(entries: &[Entry]) -> Vec<Seq> {
        entries.iter().map(|e| e.seq).collect()
    }

    fn segment_ids(dir: &TempDir) -> Vec<u64> {
        let mut ids: Vec<u64> = fs::read_dir(&dir.0)
            .unwrap()
            .filter_map(|e| segment_id(e.unwrap().file_name().to_str()?))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The segment files once the reaper has deleted what it was given, `.dead` files included
    /// (waits up to 5 s for them to be `want`, then returns what is there).
    fn ids_once_reaped(dir: &TempDir, want: &[u64]) -> Vec<u64> {
        let dead_left = || {
            fs::read_dir(&dir.0)
                .unwrap()
                .any(|e| e.unwrap().path().extension().is_some_and(|x| x == DEAD_EXTENSION))
        };
        for _ in 0..500 {
            if segment_ids(dir) == want && !dead_left() {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        segment_ids(dir)
    }

    fn counter(q: &DiskQueue, name: &str) -> Option<u64> {
        q.counters().into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// Flips one byte of a file.
    fn flip(path: &Path, at: u64) {
        let file = OpenOptions::new().read(true).write(true).open(path).unwrap();
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, at).unwrap();
        file.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    }

    fn read_ledger(path: &Path) -> Option<Ledger> {
        ledger_file::read_body(&fs::read(path).ok()?, &LEDGER_MAGIC).and_then(Ledger::decode)
    }

    #[test]
    fn frames_round_trip_and_any_damage_is_detected() {
        let body = b"an OTLP request";
        let h = FrameHeader::new(Signal::Traces, 42, 3, 1_700_000_000_123, body).unwrap();
        let frame = encode_frame(&h, body);
        assert_eq!(frame.len() as u64, h.frame_len());
        let (decoded, payload) = decode_frame(&frame).unwrap();
        assert_eq!((decoded, payload), (h, &body[..]));
        // Trailing bytes belong to the next frame.
        let mut longer = frame.clone();
        longer.extend_from_slice(b"next");
        assert_eq!(decode_frame(&longer).unwrap().0, h);
        for n in 0..frame.len() {
            assert_eq!(
                decode_frame(&frame[..n]).unwrap_err(),
                FrameError::Truncated,
                "cut at {n}"
            );
        }
        for i in 0..frame.len() {
            let mut bad = frame.clone();
            bad[i] ^= 0x01;
            assert_eq!(decode_frame(&bad).unwrap_err(), FrameError::Corrupt, "flip at {i}");
        }
        let empty = FrameHeader::new(Signal::Logs, 1, 0, 0, b"").unwrap();
        assert_eq!(decode_frame(&encode_frame(&empty, b"")).unwrap().1, b"");
    }

    #[test]
    fn segment_header_and_ledger_round_trip_and_reject_damage() {
        let h = SegmentHeader {
            id: 7,
            starts: [1, 20, 300],
        };
        let bytes = h.encode();
        assert_eq!(SegmentHeader::decode(&bytes), Some(h));
        for i in 0..bytes.len() {
            let mut bad = bytes;
            bad[i] ^= 0x80;
            assert_eq!(SegmentHeader::decode(&bad), None, "flip at {i}");
        }
        assert_eq!(SegmentHeader::decode(&bytes[..47]), None);

        let ledger = Ledger {
            last: [9, 0, 4],
            acked: vec![("dash0".into(), Signal::Logs, 9), ("file".into(), Signal::Metrics, 2)],
        };
        let bytes = ledger.encode();
        assert_eq!(Ledger::decode(&bytes), Some(ledger));
        for n in 0..bytes.len() {
            assert_eq!(Ledger::decode(&bytes[..n]), None, "cut at {n}");
        }
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x04;
            assert_eq!(Ledger::decode(&bad), None, "flip at {i}");
        }
        assert_eq!(Ledger::decode(&Ledger::default().encode()), Some(Ledger::default()));
    }

    #[test]
    fn scanning_garbage_never_panics() {
        let mut next = crate::test_support::xorshift(0x2545_f491_4f6c_dd1du64);
        // A real segment to damage.
        let mut good = SegmentHeader { id: 1, starts: [1; 3] }.encode().to_vec();
        for seq in 1..=20u64 {
            let body = vec![seq as u8; (seq * 7) as usize];
            good.extend(encode_frame(
                &FrameHeader::new(Signal::Logs, seq, 1, 0, &body).unwrap(),
                &body,
            ));
        }
        assert_eq!(scan_segment(&good).frames.len(), 20);
        for round in 0..300 {
            let mut buf = crate::test_support::mangled(&mut next, round, &good, 4000, 8);
            if round % 3 == 0 {
                buf.truncate((next() as usize) % (buf.len() + 1));
            }
            let scan = scan_segment(&buf);
            let mut end = SEGMENT_HEADER as u64;
            for (h, offset) in &scan.frames {
                assert!(*offset >= end);
                end = offset + h.frame_len();
            }
            assert!(end <= buf.len().max(SEGMENT_HEADER) as u64);
            assert!(scan.cut_at.is_none_or(|c| c <= buf.len() as u64));
        }
    }

    #[test]
    fn payloads_come_back_from_the_cache_or_the_disk() {
        for cache_bytes in [0, 1 << 20] {
            let dir = TempDir::new("dq");
            let q = open(&DiskOptions {
                cache_bytes,
                ..options(&dir, &["a"])
            });
            for i in 1..=3u8 {
                assert_eq!(
                    q.append(Signal::Logs, 2, payload(i, 10 * i as usize)).unwrap(),
                    u64::from(i)
                );
            }
            let p = q.pending("a", Signal::Logs).unwrap();
            assert_eq!((p.entries, p.records, p.bytes), (3, 6, 60));
            let mut infos = Vec::new();
            q.read("a", Signal::Logs, &mut |e| {
                infos.push((e.seq, e.len));
                true
            })
            .unwrap();
            assert_eq!(infos, [(1, 10), (2, 20), (3, 30)]);
            let taken = q.take("a", Signal::Logs, 2).unwrap();
            assert_eq!(seqs(&taken), [1, 2]);
            assert_eq!(&taken[1].payload[..], &[2u8; 20][..]);
            assert!(q.take("a", Signal::Logs, 2).unwrap().is_empty());
            q.ack("a", Signal::Logs, 2).unwrap();
            assert!(matches!(q.ack("a", Signal::Logs, 3), Err(CoreError::Usage(_))));
            assert_eq!(&take_all(&q, "a", Signal::Logs)[0].payload[..], &[3u8; 30][..]);
            assert_eq!(counter(&q, "queue_read_errors"), Some(0));
        }
    }

    #[test]
    fn restart_resumes_at_acked_positions_and_redelivers_the_rest() {
        let dir = TempDir::new("dq");
        let o = options(&dir, &["a", "b"]);
        {
            let q = open(&o);
            for i in 1..=4u8 {
                q.append(Signal::Logs, 1, payload(i, 8)).unwrap();
            }
            q.append(Signal::Traces, 5, payload(9, 8)).unwrap();
            q.take("a", Signal::Logs, 2).unwrap();
            q.ack("a", Signal::Logs, 2).unwrap();
            // Handed out but not acked: delivered again after the restart.
            q.take("a", Signal::Logs, 3).unwrap();
        }
        let q = open(&o);
        let r = q.report();
        assert_eq!(
            (r.frames, r.records, r.pending_entries, r.pending_records),
            (5, 9, 5, 9)
        );
        assert_eq!((r.cut_bytes, r.skipped_bytes, r.ledger_corrupt), (0, 0, 0));
        let a = take_all(&q, "a", Signal::Logs);
        assert_eq!(seqs(&a), [3, 4]);
        assert_eq!(&a[0].payload[..], &[3u8; 8][..]);
        assert_eq!(seqs(&take_all(&q, "b", Signal::Logs)), [1, 2, 3, 4]);
        assert_eq!(take_all(&q, "a", Signal::Traces)[0].records, 5);
        // Seqs continue per signal.
        assert_eq!(q.append(Signal::Logs, 1, payload(5, 8)).unwrap(), 5);
        assert_eq!(q.append(Signal::Traces, 1, payload(5, 8)).unwrap(), 2);
        assert_eq!(q.append(Signal::Metrics, 1, payload(5, 8)).unwrap(), 1);
        assert_eq!(q.recovery().len(), r.items().len());
    }

    #[test]
    fn seqs_continue_after_everything_was_freed() {
        let dir = TempDir::new("dq");
        let o = options(&dir, &["a"]);
        {
            let q = open(&o);
            for _ in 0..3 {
                q.append(Signal::Metrics, 1, payload(0, 8)).unwrap();
            }
            take_all(&q, "a", Signal::Metrics);
            q.ack("a", Signal::Metrics, 3).unwrap();
        }
        drop(open(&o));
        // Without the ledger the newest segment's header still knows where seqs were.
        fs::remove_file(dir.0.join(LEDGER_FILE)).unwrap();
        let q = open(&o);
        assert_eq!(q.report().frames, 0);
        assert_eq!(q.append(Signal::Metrics, 1, payload(0, 8)).unwrap(), 4);
        assert_eq!(segment_ids(&dir).len(), 1, "empty segments of earlier runs are deleted");
    }

    #[test]
    fn the_reaper_shrinks_a_file_step_by_step_then_deletes_it() {
        let dir = TempDir::new("reap");
        let path = segment_path(&dir.0, 7);
        let file = File::create(&path).unwrap();
        file.set_len(3 * REAP_STEP + 5).unwrap();
        reap_file(&path, &|| false);
        assert!(!path.exists());
        assert!(!path.with_extension(DEAD_EXTENSION).exists());
        // Stopped: what is left keeps its dead name, for the next open to delete.
        file.set_len(0).unwrap();
        let path2 = segment_path(&dir.0, 8);
        File::create(&path2).unwrap().set_len(3 * REAP_STEP).unwrap();
        reap_file(&path2, &|| true);
        let dead = path2.with_extension(DEAD_EXTENSION);
        assert_eq!(fs::metadata(&dead).unwrap().len(), 3 * REAP_STEP);
    }

    #[test]
    fn an_open_deletes_what_a_crash_left_mid_reap_without_reading_it_as_damage() {
        let dir = TempDir::new("dq");
        let o = DiskOptions {
            segment_bytes: 256,
            ..options(&dir, &["a"])
        };
        let (first, copy) = {
            let q = open(&o);
            for i in 1..=3u8 {
                q.append(Signal::Logs, 1, payload(i, 200)).unwrap();
            }
            // Listed before the ack: the reaper may rename the first segment at once after it.
            let ids = segment_ids(&dir);
            let (first, rest) = (ids[0], ids[1..].to_vec());
            let copy = fs::read(segment_path(&dir.0, first)).unwrap();
            take_all(&q, "a", Signal::Logs);
            q.ack("a", Signal::Logs, 1).unwrap();
            assert_eq!(ids_once_reaped(&dir, &rest), rest);
            (first, copy)
        };
        // That delivered segment cut mid-frame, as a crash while the reaper shrank it leaves it.
        let dead = segment_path(&dir.0, first).with_extension(DEAD_EXTENSION);
        fs::write(&dead, &copy[..100]).unwrap();
        // Not a segment's name: left alone.
        fs::write(dir.0.join("notes.dead"), b"x").unwrap();
        let q = open(&o);
        let r = q.report();
        // A `.dead` file is never read as a segment (what the rename buys); the open deletes it.
        assert_eq!((r.cut_bytes, r.skipped_bytes, r.bad_headers), (0, 0, 0), "{r:?}");
        assert!(!dead.exists());
        assert!(dir.0.join("notes.dead").exists());
        assert_eq!(seqs(&take_all(&q, "a", Signal::Logs)), [2, 3]);
    }

    #[test]
    fn a_segment_is_deleted_only_once_every_exporter_acked_it() {
        let dir = TempDir::new("dq");
        // One 200-byte frame per segment.
        let q = open(&DiskOptions {
            segment_bytes: 256,
            ..options(&dir, &["a", "b"])
        });
        for i in 1..=3u8 {
            q.append(Signal::Logs, 1, payload(i, 200)).unwrap();
        }
        assert_eq!(segment_ids(&dir), [1, 2, 3]);
        take_all(&q, "a", Signal::Logs);
        q.ack("a", Signal::Logs, 3).unwrap();
        assert_eq!(segment_ids(&dir), [1, 2, 3], "b has not acked");
        q.take("b", Signal::Logs, 2).unwrap();
        q.ack("b", Signal::Logs, 1).unwrap();
        assert_eq!(ids_once_reaped(&dir, &[2, 3]), [2, 3]);
        q.ack("b", Signal::Logs, 2).unwrap();
        assert_eq!(ids_once_reaped(&dir, &[3]), [3], "the active segment stays");
        assert_eq!(q.usage().records_by_signal[Signal::Logs.index()], 1);
        assert_eq!(counter(&q, "queue_segments"), Some(1));
    }

    #[test]
    fn queue_full_at_the_byte_limit_and_recovers_after_acks() {
        let dir = TempDir::new("dq");
        let frame = (FRAME_HEADER + 100) as u64;
        let max = SEGMENT_HEADER as u64 + 3 * frame;
        let q = open(&DiskOptions {
            max_bytes: max,
            ..options(&dir, &["a", "b"])
        });
        for _ in 0..3 {
            q.append(Signal::Logs, 1, payload(0, 100)).unwrap();
        }
        assert_eq!(q.usage().bytes as u64, max);
        let full = q.append(Signal::Traces, 1, payload(0, 1)).unwrap_err();
        let limit = max as usize;
        assert_eq!(full, CoreError::QueueFull { used: limit, limit });
        let too_large = q.append(Signal::Logs, 1, payload(0, limit)).unwrap_err();
        assert_eq!(too_large, CoreError::TooLarge { limit });

        take_all(&q, "a", Signal::Logs);
        q.ack("a", Signal::Logs, 3).unwrap();
        assert!(matches!(
            q.append(Signal::Logs, 1, payload(0, 100)),
            Err(CoreError::QueueFull { .. })
        ));
        take_all(&q, "b", Signal::Logs);
        q.ack("b", Signal::Logs, 3).unwrap();
        assert_eq!(
            q.usage().bytes,
            SEGMENT_HEADER,
            "a fully acked active segment is rolled away"
        );
        for _ in 0..3 {
            q.append(Signal::Logs, 1, payload(0, 100)).unwrap();
        }
    }

    fn write_frames(o: &DiskOptions, n: u8, len: usize) {
        let q = open(o);
        for i in 1..=n {
            q.append(Signal::Logs, 1, payload(i, len)).unwrap();
        }
    }

    #[test]
    fn a_torn_tail_is_cut_and_the_good_frames_kept() {
        let dir = TempDir::new("dq");
        let o = options(&dir, &["a"]);
        write_frames(&o, 3, 50);
        let path = segment_path(&dir.0, 1);
        let good = SEGMENT_HEADER as u64 + 2 * 94;
        // The third frame was torn half-way through.
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(good + 60)
            .unwrap();
        let q = open(&o);
        let r = q.report();
        assert_eq!((r.frames, r.cut_bytes, r.cut_segments, r.skipped_bytes), (2, 60, 1, 0));
        assert_eq!(fs::metadata(&path).unwrap().len(), good, "the file is truncated");
        assert_eq!(seqs(&take_all(&q, "a", Signal::Logs)), [1, 2]);
        // Nobody can have acked seq 3, so the next append may take it.
        assert_eq!(q.append(Signal::Logs, 1, payload(0, 5)).unwrap(), 3);
    }

    #[test]
    fn garbage_after_the_last_frame_is_cut() {
        let dir = TempDir::new("dq");
        let o = options(&dir, &["a"]);
        write_frames(&o, 3, 50);
        let path = segment_path(&dir.0, 1);
        let len = fs::metadata(&path).unwrap().len();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xAB; 100], len).unwrap();
        drop(file);
        let q = open(&o);
        let r = q.report();
        assert_eq!((r.frames, r.cut_bytes, r.cut_segments), (3, 100, 1));
        assert_eq!(seqs(&take_all(&q, "a", Signal::Logs)), [1, 2, 3]);
    }

    #[test]
    fn a_corrupt_frame_in_the_middle_is_skipped_and_counted() {
        for at in [SEGMENT_HEADER as u64 + 94 + 50, SEGMENT_HEADER as u64 + 94 + 5] {
            // First in the payload of frame 2, then in its length field.
            let dir = TempDir::new("dq");
            let o = options(&dir, &["a"]);
            write_frames(&o, 4, 50);
            flip(&segment_path(&dir.0, 1), at);
            let q = open(&o);
            let r = q.report();
            assert_eq!(
                (r.frames, r.skipped_regions, r.skipped_bytes, r.lost_frames, r.cut_bytes),
                (3, 1, 94, 1, 0),
                "flip at {at}"
            );
            let taken = take_all(&q, "a", Signal::Logs);
            assert_eq!(seqs(&taken), [1, 3, 4]);
            assert_eq!(&taken[1].payload[..], &[3u8; 50][..]);
            q.ack("a", Signal::Logs, 4).unwrap();
            assert_eq!(q.usage().records_by_signal, [0; 3]);
            assert_eq!(q.append(Signal::Logs, 1, payload(0, 5)).unwrap(), 5);
        }
    }

    #[test]
    fn a_damaged_segment_header_still_yields_its_frames() {
        let dir = TempDir::new("dq");
        let o = options(&dir, &["a"]);
        write_frames(&o, 2, 10);
        flip(&segment_path(&dir.0, 1), 20);
        let q = open(&o);
        assert_eq!((q.report().bad_headers, q.report().frames), (1, 2));
        assert_eq!(seqs(&take_all(&q, "a", Signal::Logs)), [1, 2]);
    }

    #[test]
    fn a_corrupt_or_missing_ledger_means_redelivery_not_loss() {
        for damage in ["corrupt", "missing"] {
            let dir = TempDir::new("dq");
            let o = options(&dir, &["a"]);
            {
                let q = open(&o);
                for i in 1..=3 {
                    q.append(Signal::Logs, 1, payload(i, 10)).unwrap();
                }
                q.take("a", Signal::Logs, 2).unwrap();
                q.ack("a", Signal::Logs, 2).unwrap();
            }
            let ledger = dir.0.join(LEDGER_FILE);
            let stored = read_ledger(&ledger).unwrap();
            assert!(stored.acked.contains(&("a".into(), Signal::Logs, 2)));
            if damage == "corrupt" {
                // Both slots.
                let half = fs::metadata(&ledger).unwrap().len() / 2;
                flip(&ledger, 14);
                flip(&ledger, half + 14);
            } else {
                fs::remove_file(&ledger).unwrap();
            }
            let q = open(&o);
            assert_eq!(q.report().ledger_corrupt, u64::from(damage == "corrupt"));
            assert_eq!(q.report().ledger_missing, u64::from(damage == "missing"));
            assert_eq!(seqs(&take_all(&q, "a", Signal::Logs)), [1, 2, 3], "{damage}");
            assert_eq!(q.append(Signal::Logs, 1, payload(0, 1)).unwrap(), 4);
            // The ledger is rewritten whole at open.
            assert!(read_ledger(&ledger).is_some());
        }
    }

    #[test]
    fn damage_to_one_ledger_slot_falls_back_to_the_other() {
        let mut resumed = Vec::new();
        for slot in 0..2 {
            let dir = TempDir::new("dq");
            let o = options(&dir, &["a"]);
            {
                let q = open(&o);
                for i in 1..=3 {
                    q.append(Signal::Logs, 1, payload(i, 10)).unwrap();
                }
                for seq in 1..=2 {
                    q.take("a", Signal::Logs, seq).unwrap();
                    q.ack("a", Signal::Logs, seq).unwrap();
                }
            }
            let ledger = dir.0.join(LEDGER_FILE);
            let half = fs::metadata(&ledger).unwrap().len() / 2;
            flip(&ledger, slot * half + 24);
            let q = open(&o);
            assert_eq!(q.report().ledger_corrupt, 0, "slot {slot}: the other one holds");
            assert_eq!(q.report().ledger_torn, 1, "slot {slot}: reported");
            let taken = seqs(&take_all(&q, "a", Signal::Logs));
            assert_eq!(taken.last(), Some(&3), "slot {slot}: nothing lost");
            resumed.push(taken);
        }
        // The slots hold ack 2 (the first, written last) and ack 1: damage to the newer one leaves
        // the earlier update, and seq 2 is delivered again; damage to the older changes nothing.
        assert_eq!(resumed, [vec![2, 3], vec![3]]);
    }

    #[test]
    fn a_ledger_written_whole_by_an_earlier_version_is_read() {
        let dir = TempDir::new("dq");
        let o = options(&dir, &["a"]);
        {
            let q = open(&o);
            for i in 1..=3 {
                q.append(Signal::Logs, 1, payload(i, 10)).unwrap();
            }
        }
        let ledger = Ledger {
            last: [3, 0, 0],
            acked: vec![("a".into(), Signal::Logs, 2)],
        };
        fs::write(dir.0.join(LEDGER_FILE), ledger.encode()).unwrap();
        let q = open(&o);
        assert_eq!(q.report().ledger_corrupt, 0);
        assert_eq!(seqs(&take_all(&q, "a", Signal::Logs)), [3]);
        // Rewritten in slots at open.
        assert!(!fs::read(dir.0.join(LEDGER_FILE)).unwrap().starts_with(&LEDGER_MAGIC));
        assert!(read_ledger(&dir.0.join(LEDGER_FILE))
            .unwrap()
            .acked
            .contains(&("a".into(), Signal::Logs, 2)));
    }

    #[test]
    fn removed_exporters_are_ignored_and_new_ones_start_at_the_oldest_entry() {
        let dir = TempDir::new("dq");
        {
            let q = open(&options(&dir, &["a", "b"]));
            for i in 1..=3 {
                q.append(Signal::Logs, 1, payload(i, 10)).unwrap();
            }
            q.take("a", Signal::Logs, 2).unwrap();
            q.ack("a", Signal::Logs, 2).unwrap();
            q.take("b", Signal::Logs, 1).unwrap();
            q.ack("b", Signal::Logs, 1).unwrap();
        }
        let q = open(&options(&dir, &["a", "c"]));
        assert_eq!(q.report().ledger_ignored, 3, "b's three entries");
        assert_eq!(seqs(&take_all(&q, "a", Signal::Logs)), [3]);
        assert_eq!(seqs(&take_all(&q, "c", Signal::Logs)), [1, 2, 3]);
        drop(q);
        // With b gone and a done, nothing holds the data once a acks.
        let q = open(&options(&dir, &["a"]));
        take_all(&q, "a", Signal::Logs);
        q.ack("a", Signal::Logs, 3).unwrap();
        assert_eq!(q.usage().records_by_signal, [0; 3]);
        // The active segment is all that is left once the reaper is done.
        let active = *segment_ids(&dir).last().unwrap();
        assert_eq!(ids_once_reaped(&dir, &[active]), [active]);
    }

    #[test]
    fn exporter_max_bytes_drops_the_oldest_for_that_exporter_only() {
        let dir = TempDir::new("dq");
        let q = open(&DiskOptions {
            segment_bytes: 256,
            limits: vec![(
                "dead".into(),
                ExporterLimit {
                    max_bytes: Some(250),
                    max_age: None,
                },
            )],
            ..options(&dir, &["live", "dead"])
        });
        for i in 1..=5 {
            q.append(Signal::Logs, 2, payload(i, 100)).unwrap();
        }
        assert_eq!(counter(&q, "dead_logs_dropped_entries"), Some(3));
        assert_eq!(counter(&q, "dead_logs_dropped_records"), Some(6));
        assert_eq!(counter(&q, "dead_traces_dropped_records"), Some(0));
        assert_eq!(counter(&q, "live_logs_dropped_records"), None, "no limits, no counters");
        assert_eq!(seqs(&take_all(&q, "live", Signal::Logs)), [1, 2, 3, 4, 5]);
        q.ack("live", Signal::Logs, 5).unwrap();
        // Segments 1-3 held only what dead dropped and live acked.
        assert_eq!(ids_once_reaped(&dir, &[4, 5]), [4, 5]);
        assert_eq!(q.usage().records_by_signal[Signal::Logs.index()], 4);
        let p = q.pending("dead", Signal::Logs).unwrap();
        assert_eq!((p.entries, p.records, p.bytes), (2, 4, 200));
        assert_eq!(seqs(&take_all(&q, "dead", Signal::Logs)), [4, 5]);
    }

    #[test]
    fn data_dropped_behind_an_in_flight_batch_is_committed_by_its_ack() {
        let dir = TempDir::new("dq");
        let o = DiskOptions {
            limits: vec![(
                "a".into(),
                ExporterLimit {
                    max_bytes: Some(150),
                    max_age: None,
                },
            )],
            ..options(&dir, &["a"])
        };
        {
            let q = open(&o);
            q.append(Signal::Logs, 1, payload(1, 100)).unwrap();
            q.take("a", Signal::Logs, 1).unwrap();
            // Entry 1 is in flight, so 2 and 3 are what goes over the limit.
            q.append(Signal::Logs, 1, payload(2, 100)).unwrap();
            q.append(Signal::Logs, 1, payload(3, 100)).unwrap();
            assert_eq!(counter(&q, "a_logs_dropped_entries"), Some(2));
            assert_eq!(q.usage().records_by_signal[0], 1);
            assert!(take_all(&q, "a", Signal::Logs).is_empty());
            q.ack("a", Signal::Logs, 1).unwrap();
            assert_eq!(q.usage().records_by_signal[0], 0);
        }
        let q = open(&o);
        assert_eq!(q.report().pending_entries, 0, "the ack committed the dropped range");
        assert_eq!(q.append(Signal::Logs, 1, payload(0, 1)).unwrap(), 4);
    }

    #[test]
    fn exporter_max_age_drops_old_entries_also_after_a_restart() {
        let dir = TempDir::new("dq");
        let limited = DiskOptions {
            limits: vec![(
                "slow".into(),
                ExporterLimit {
                    max_bytes: None,
                    max_age: Some(Duration::from_millis(100)),
                },
            )],
            ..options(&dir, &["fast", "slow"])
        };
        {
            let q = open(&options(&dir, &["fast", "slow"]));
            q.append(Signal::Traces, 4, payload(1, 10)).unwrap();
        }
        thread::sleep(Duration::from_millis(150));
        let q = open(&limited);
        // The append time survived the restart: the batch is due and the entry is old.
        let fast = q.pending("fast", Signal::Traces).unwrap();
        assert!(fast.oldest.unwrap().elapsed() >= Duration::from_millis(150));
        q.append(Signal::Traces, 1, payload(2, 10)).unwrap();
        let slow = q.pending("slow", Signal::Traces).unwrap();
        assert_eq!((slow.entries, slow.records), (1, 1));
        assert_eq!(counter(&q, "slow_traces_dropped_records"), Some(4));
        assert_eq!(seqs(&take_all(&q, "fast", Signal::Traces)), [1, 2]);
        thread::sleep(Duration::from_millis(150));
        assert_eq!(q.pending("slow", Signal::Traces).unwrap().entries, 0);
        assert_eq!(counter(&q, "slow_traces_dropped_entries"), Some(2));
    }

    #[test]
    fn a_locked_directory_is_a_clear_error() {
        let dir = TempDir::new("dq");
        let o = options(&dir, &["a"]);
        let first = open(&o);
        let err = DiskQueue::open(o.clone()).unwrap_err();
        assert!(matches!(err, CoreError::Locked(_)), "{err}");
        assert!(err.to_string().contains("in use"), "{err}");
        drop(first);
        drop(open(&o));
    }

    #[test]
    fn every_fsync_policy_works() {
        assert_eq!(Fsync::parse("always", Duration::ZERO).unwrap(), Fsync::Always);
        assert_eq!(Fsync::parse("never", Duration::ZERO).unwrap(), Fsync::Never);
        let every = Duration::from_millis(5);
        assert_eq!(Fsync::parse("interval", every).unwrap(), Fsync::Interval(every));
        assert!(Fsync::parse("interval", Duration::ZERO).is_err());
        assert!(Fsync::parse("sometimes", every).is_err());
        for fsync in [Fsync::Always, Fsync::Interval(every), Fsync::Never] {
            let dir = TempDir::new("dq");
            let o = DiskOptions {
                fsync,
                segment_bytes: 300,
                ..options(&dir, &["a"])
            };
            {
                let q = open(&o);
                for i in 1..=4 {
                    q.append(Signal::Logs, 1, payload(i, 100)).unwrap();
                }
                q.take("a", Signal::Logs, 2).unwrap();
                q.ack("a", Signal::Logs, 2).unwrap();
                if matches!(fsync, Fsync::Interval(_)) {
                    // The background thread writes the ledger without waiting for a close.
                    thread::sleep(Duration::from_millis(100));
                    let ledger = read_ledger(&dir.0.join(LEDGER_FILE)).unwrap();
                    assert!(ledger.acked.contains(&("a".into(), Signal::Logs, 2)), "{fsync:?}");
                }
            }
            let q = open(&o);
            assert_eq!(seqs(&take_all(&q, "a", Signal::Logs)), [3, 4], "{fsync:?}");
        }
    }

    #[test]
    fn concurrent_appends_get_distinct_seqs() {
        let dir = TempDir::new("dq");
        let q = Arc::new(open(&DiskOptions {
            fsync: Fsync::Always,
            segment_bytes: 4096,
            ..options(&dir, &["a"])
        }));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let q = Arc::clone(&q);
                thread::spawn(move || {
                    (0..25)
                        .map(|_| q.append(Signal::Logs, 1, payload(t, 64)).unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<Seq> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        all.sort_unstable();
        assert_eq!(all, (1..=100).collect::<Vec<_>>());
        assert_eq!(take_all(&q, "a", Signal::Logs).len(), 100);
    }

    #[test]
    fn a_frame_damaged_on_disk_after_open_is_handed_out_empty_and_counted() {
        let dir = TempDir::new("dq");
        let q = open(&DiskOptions {
            cache_bytes: 0,
            ..options(&dir, &["a"])
        });
        q.append(Signal::Logs, 3, payload(1, 50)).unwrap();
        q.append(Signal::Logs, 3, payload(2, 50)).unwrap();
        flip(
            &segment_path(&dir.0, 1),
            SEGMENT_HEADER as u64 + FRAME_HEADER as u64 + 10,
        );
        let taken = take_all(&q, "a", Signal::Logs);
        assert_eq!(seqs(&taken), [1, 2]);
        assert_eq!((taken[0].records, taken[0].payload.len()), (0, 0));
        assert_eq!(&taken[1].payload[..], &[2u8; 50][..]);
        // It read back fine each time, just not as written: nothing to wait for.
        assert_eq!(counter(&q, "queue_damaged_entries"), Some(1));
        assert_eq!(counter(&q, "queue_read_errors"), Some(0));
        q.ack("a", Signal::Logs, 2).unwrap();
    }

    #[test]
    fn crafted_extreme_values_are_errors_not_panics() {
        let dir = TempDir::new("dq");
        let o = options(&dir, &["a"]);
        drop(open(&o));
        // Well-formed frames: an absurd record count, and a seq at the very end of the seq space.
        let mut seg = SegmentHeader { id: 2, starts: [1; 3] }.encode().to_vec();
        for (seq, records) in [(1, u64::MAX), (Seq::MAX, 1)] {
            seg.extend(encode_frame(
                &FrameHeader::new(Signal::Logs, seq, records, u64::MAX, b"x").unwrap(),
                b"x",
            ));
        }
        fs::write(segment_path(&dir.0, 2), &seg).unwrap();
        let q = open(&o);
        let r = q.report();
        assert_eq!((r.frames, r.records, r.skipped_frames), (1, u64::from(u32::MAX), 1));
        // The implausible seq was not believed, so seqs go on.
        assert_eq!(q.append(Signal::Logs, 1, payload(0, 1)).unwrap(), 2);
        assert_eq!(seqs(&take_all(&q, "a", Signal::Logs)), [1, 2]);
        drop(q);
        // The last possible segment id.
        fs::write(segment_path(&dir.0, u64::MAX), b"").unwrap();
        assert!(matches!(DiskQueue::open(o), Err(CoreError::Storage(_))));
    }

    #[test]
    fn options_are_checked() {
        let dir = TempDir::new("dq");
        let o = options(&dir, &["a"]);
        let limit = |name: &str, max_bytes| {
            vec![(
                name.to_string(),
                ExporterLimit {
                    max_bytes,
                    max_age: None,
                },
            )]
        };
        let bad = [
            DiskOptions {
                exporters: Vec::new(),
                ..o.clone()
            },
            DiskOptions {
                max_bytes: 10,
                ..o.clone()
            },
            DiskOptions {
                segment_bytes: 10,
                ..o.clone()
            },
            DiskOptions {
                segment_bytes: MAX_SEGMENT_BYTES + 1,
                ..o.clone()
            },
            DiskOptions {
                fsync: Fsync::Interval(Duration::ZERO),
                ..o.clone()
            },
            DiskOptions {
                limits: limit("nope", Some(1)),
                ..o.clone()
            },
            DiskOptions {
                limits: limit("a", Some(0)),
                ..o.clone()
            },
            DiskOptions {
                limits: [limit("a", Some(1)), limit("a", None)].concat(),
                ..o.clone()
            },
        ];
        for options in bad {
            let err = DiskQueue::open(options).unwrap_err();
            assert!(matches!(err, CoreError::Usage(_)), "{err}");
        }
        // A directory that cannot be created is a storage error, not a panic.
        fs::write(dir.0.join("file"), b"").unwrap();
        assert!(matches!(
            DiskQueue::open(DiskOptions {
                dir: dir.0.join("file").join("x"),
                ..o
            }),
            Err(CoreError::Storage(_))
        ));
    }

    fn with_faults(o: DiskOptions, faults: &Arc<Faults>) -> DiskOptions {
        DiskOptions {
            faults: Some(Arc::clone(faults)),
            ..o
        }
    }

    /// Faults to inject, and the options of a queue in `dir` for exporter "a", fsync "always",
    /// that injects them.
    fn always_with_faults(dir: &TempDir) -> (Arc<Faults>, DiskOptions) {
        let faults = Arc::new(Faults::default());
        let options = with_faults(
            DiskOptions {
                fsync: Fsync::Always,
                ..options(dir, &["a"])
            },
            &faults,
        );
        (faults, options)
    }

    /// Waits for another thread to get somewhere (a guard against hanging, not a timing check).
    pub(super) fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "gave up waiting until {what}"
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    fn is_storage<T: std::fmt::Debug>(result: Result<T>) -> bool {
        matches!(result, Err(CoreError::Storage(_)))
    }

    #[test]
    fn a_failed_ledger_update_is_counted_and_the_next_one_writes_a_new_file() {
        use std::os::unix::fs::MetadataExt;
        let dir = TempDir::new("dq");
        let (faults, o) = always_with_faults(&dir);
        let ledger = dir.0.join(LEDGER_FILE);
        {
            let q = open(&o);
            for i in 1..=3 {
                q.append(Signal::Logs, 1, payload(i, 10)).unwrap();
            }
            let inode = fs::metadata(&ledger).unwrap().ino();
            q.take("a", Signal::Logs, 1).unwrap();
            q.ack("a", Signal::Logs, 1).unwrap();
            assert_eq!(fs::metadata(&ledger).unwrap().ino(), inode, "updated in place");
            faults.ledgers.store(1, Ordering::SeqCst);
            q.take("a", Signal::Logs, 2).unwrap();
            // The ack stands in memory; the failure is counted, not raised.
            q.ack("a", Signal::Logs, 2).unwrap();
            assert_eq!(counter(&q, "queue_storage_errors"), Some(1));
            assert_eq!(
                counter(&q, "queue_ledger_writes"),
                Some(3),
                "open, ack 1, the failed ack 2"
            );
            // What the failed update left is the previous update or its own (the write went
            // through, its fsync failed): both are acks that happened.
            let left = read_ledger(&ledger).unwrap().acked[0].2;
            assert!((1..=2).contains(&left), "{left}");
            q.take("a", Signal::Logs, 3).unwrap();
            q.ack("a", Signal::Logs, 3).unwrap();
            assert_ne!(
                fs::metadata(&ledger).unwrap().ino(),
                inode,
                "a new file after the failure"
            );
            assert_eq!(read_ledger(&ledger).unwrap().acked[0], ("a".into(), Signal::Logs, 3));
        }
        assert!(take_all(&open(&o), "a", Signal::Logs).is_empty());
    }

    /// A disk that takes no writes when the queue opens (full, or failing): the queue opens all
    /// the same and delivers what it holds; appends fail until a segment can be written again.
    #[test]
    fn a_disk_refusing_writes_at_open_still_delivers_what_is_queued() {
        let dir = TempDir::new("dq");
        let (faults, o) = always_with_faults(&dir);
        {
            let q = open(&o);
            for i in 1..=3 {
                q.append(Signal::Logs, 1, payload(i, 10)).unwrap();
            }
        }
        let before = segment_ids(&dir);
        faults.syncs.store(u64::MAX, Ordering::SeqCst);
        let q = open(&o);
        let report = q.recovery();
        assert!(report.contains(&("no_active_segment", 1)), "{report:?}");
        assert_eq!(segment_ids(&dir), before, "no new segment file");
        assert!(is_storage(q.append(Signal::Logs, 1, payload(9, 10))));
        let entries = take_all(&q, "a", Signal::Logs);
        assert_eq!(seqs(&entries), [1, 2, 3]);
        q.ack("a", Signal::Logs, 3).unwrap();
        // The disk takes writes again: the next append makes a segment.
        faults.syncs.store(0, Ordering::SeqCst);
        let seq = q.append(Signal::Logs, 1, payload(4, 10)).unwrap();
        assert_eq!(seq, 4);
        drop(q);
        let q = open(&o);
        assert_eq!(seqs(&take_all(&q, "a", Signal::Logs)), [4]);
        // A new queue has nothing to deliver: a disk refusing writes fails its open.
        let empty = TempDir::new("dq");
        faults.syncs.store(u64::MAX, Ordering::SeqCst);
        let fresh = with_faults(
            DiskOptions {
                fsync: Fsync::Always,
                ..options(&empty, &["a"])
            },
            &faults,
        );
        assert!(DiskQueue::open(fresh).is_err());
    }

    /// A segment the disk cannot read at open (a bad sector) is set aside; the others open and
    /// are delivered. An error that is not the medium's still fails the open.
    #[test]
    fn an_unreadable_segment_is_set_aside_and_the_rest_opens() {
        let dir = TempDir::new("dq");
        let faults = Arc::new(Faults::default());
        let o = with_faults(options(&dir, &["a"]), &faults);
        for i in 1..=2 {
            let q = open(&o); // every open starts a segment: one per round
            q.append(Signal::Logs, 1, payload(i, 10)).unwrap();
            q.append(Signal::Logs, 1, payload(i, 10)).unwrap();
        }
        let first = segment_ids(&dir)[0];
        faults.reads.store(1, Ordering::SeqCst); // the first segment read at open fails (EIO)
        let q = open(&o);
        let report = q.recovery();
        assert!(report.contains(&("unreadable_segments", 1)), "{report:?}");
        assert_eq!(seqs(&take_all(&q, "a", Signal::Logs)), [3, 4]);
        assert!(dir.0.join(format!("seg-{first:020}.unreadable")).exists());
        assert!(!segment_ids(&dir).contains(&first));
        let seq = q.append(Signal::Logs, 1, payload(5, 10)).unwrap();
        assert_eq!(seq, 5);
        drop(q);
        // Set aside for good: later opens do not read it.
        let q = open(&o);
        assert!(q.recovery().contains(&("unreadable_segments", 0)));
        assert_eq!(seqs(&take_all(&q, "a", Signal::Logs)), [3, 4, 5]);
        drop(q);
        // Nor does a new segment ever take a set-aside one's id (it would be overwritten at the
        // next set-aside): the newest segment set aside, the next one is newer still.
        let newest = *segment_ids(&dir).last().unwrap();
        let path = segment_path(&dir.0, newest);
        fs::rename(&path, path.with_extension(UNREADABLE_EXTENSION)).unwrap();
        let q = open(&o);
        assert!(segment_ids(&dir).iter().all(|&id| id != newest));
        assert!(*segment_ids(&dir).last().unwrap() > newest);
        drop(q);
    }

    #[test]
    fn a_failed_fsync_fails_every_write_it_did_not_cover() {
        let dir = TempDir::new("dq");
        let faults = Arc::new(Faults::default());
        let q = Arc::new(open(&with_faults(
            DiskOptions {
                fsync: Fsync::Always,
                ..options(&dir, &["a"])
            },
            &faults,
        )));
        assert_eq!(q.append(Signal::Logs, 1, payload(1, 10)).unwrap(), 1);
        // A's fsync starts and fails; C writes while it runs, then waits to sync (group commit).
        faults.hold(true);
        faults.syncs.store(1, Ordering::SeqCst);
        let append = |fill: u8| {
            let q = Arc::clone(&q);
            thread::spawn(move || q.append(Signal::Logs, 1, payload(fill, 10)))
        };
        let a = append(2);
        wait_until("A is in its fsync", || faults.waiting.load(Ordering::SeqCst) == 1);
        let c = append(3);
        wait_until("C wrote", || q.pending("a", Signal::Logs).unwrap().entries == 3);
        faults.hold(false);
        assert!(is_storage(a.join().unwrap()), "A's fsync failed");
        // Linux reports a writeback error to one fsync: C's own fsync would succeed, yet nothing
        // ever covered its write.
        assert!(is_storage(c.join().unwrap()), "C wrote before the failed fsync");
        assert_eq!(counter(&q, "queue_storage_errors"), Some(1));
        // Acked writes stay acked; the segment takes no more frames.
        assert_eq!(q.append(Signal::Logs, 1, payload(4, 10)).unwrap(), 4);
        assert_eq!(segment_ids(&dir), [1, 2]);
        // The unacknowledged frames may still be delivered: duplicates at worst, never a loss.
        assert_eq!(seqs(&take_all(&q, "a", Signal::Logs)), [1, 2, 3, 4]);
        q.sync().unwrap();
    }

    #[test]
    fn after_a_failed_fsync_a_new_segment_must_sync_before_appends_succeed() {
        let dir = TempDir::new("dq");
        let faults = Arc::new(Faults::default());
        let o = with_faults(
            DiskOptions {
                fsync: Fsync::Always,
                cache_bytes: 0,
                ..options(&dir, &["a"])
            },
            &faults,
        );
        let q = open(&o);
        // The append's fsync fails, then so does the header fsync of the segment it moves to.
        faults.syncs.store(2, Ordering::SeqCst);
        assert!(is_storage(q.append(Signal::Logs, 1, payload(1, 10))));
        assert!(is_storage(q.append(Signal::Logs, 1, payload(2, 10))));
        assert_eq!(segment_ids(&dir), [1], "the segment that failed to sync was removed");
        assert_eq!(q.append(Signal::Logs, 1, payload(3, 10)).unwrap(), 2);
        assert_eq!(segment_ids(&dir), [1, 2]);
        assert_eq!(counter(&q, "queue_storage_errors"), Some(2));
        // Unreadable: seq 1 was never reported durable, so it is not waited for; seq 2 was.
        faults.reads.store(u64::MAX, Ordering::SeqCst);
        let taken = take_all(&q, "a", Signal::Logs);
        assert_eq!((seqs(&taken), taken[0].payload.len()), (vec![1], 0));
        assert_eq!(counter(&q, "queue_damaged_entries"), Some(1));
        assert_eq!(counter(&q, "queue_read_stalled"), Some(1));
        faults.reads.store(0, Ordering::SeqCst);
        assert_eq!(&take_all(&q, "a", Signal::Logs)[0].payload[..], &[3u8; 10][..]);
    }

    /// A sink that records each delivery: (token, durable) per waiter.
    #[derive(Default)]
    struct Collect(Mutex<Vec<Vec<(u64, bool)>>>);

    impl DurableSink for Collect {
        fn deliver(&self, results: Vec<(u64, Result<()>)>) {
            let told = results.into_iter().map(|(t, r)| (t, r.is_ok())).collect();
            lock(&self.0).push(told);
        }
    }

    impl Collect {
        fn told(&self) -> Vec<(u64, bool)> {
            let mut all: Vec<_> = lock(&self.0).iter().flatten().copied().collect();
            all.sort_unstable();
            all
        }
    }

    #[test]
    fn deferred_appends_share_one_fsync_and_each_sink_is_told_once_per_group() {
        let dir = TempDir::new("dq");
        let (faults, o) = always_with_faults(&dir);
        let q = open(&o);
        let (first, second) = (Arc::new(Collect::default()), Arc::new(Collect::default()));
        // The syncer takes the first waiter and holds in its fsync while three more line up.
        faults.hold(true);
        let (_, p) = q.append_deferred(Signal::Logs, 1, payload(1, 10)).unwrap();
        q.when_durable(p.unwrap(), first.clone(), 1);
        wait_until("the syncer is in its fsync", || {
            faults.waiting.load(Ordering::SeqCst) == 1
        });
        for (token, sink) in [(2, &first), (3, &second), (4, &first)] {
            let (_, p) = q.append_deferred(Signal::Traces, 1, payload(2, 10)).unwrap();
            q.when_durable(p.unwrap(), Arc::clone(sink) as Arc<dyn DurableSink>, token);
        }
        faults.hold(false);
        wait_until("every waiter was told", || {
            first.told().len() + second.told().len() == 4
        });
        assert_eq!(first.told(), [(1, true), (2, true), (4, true)]);
        assert_eq!(second.told(), [(3, true)]);
        // Two groups: the first waiter alone, then the three that queued behind its fsync, whose
        // sinks were told once each.
        assert_eq!(lock(&first.0).len(), 2);
        assert_eq!(lock(&second.0).len(), 1);
        // A queue with nothing to wait for has no point to give.
        let never = TempDir::new("dq");
        let q = open(&options(&never, &["a"]));
        assert_eq!(q.append_deferred(Signal::Logs, 1, payload(1, 10)).unwrap(), (1, None));
    }

    #[test]
    fn a_failed_group_fsync_fails_the_waiters_it_did_not_cover_and_only_those() {
        let dir = TempDir::new("dq");
        let (faults, o) = always_with_faults(&dir);
        let q = open(&o);
        let sink = Arc::new(Collect::default());
        let (_, covered) = q.append_deferred(Signal::Logs, 1, payload(1, 10)).unwrap();
        q.sync_point(covered.unwrap()).unwrap();
        let (_, lost) = q.append_deferred(Signal::Logs, 1, payload(2, 10)).unwrap();
        faults.syncs.store(1, Ordering::SeqCst);
        q.when_durable(covered.unwrap(), sink.clone(), 1);
        q.when_durable(lost.unwrap(), sink.clone(), 2);
        wait_until("both waiters were told", || sink.told().len() == 2);
        assert_eq!(sink.told(), [(1, true), (2, false)]);
        // A later fsync succeeds, yet the write it did not cover is never reported durable.
        let again = Arc::new(Collect::default());
        q.when_durable(lost.unwrap(), again.clone(), 3);
        wait_until("the late waiter was told", || again.told().len() == 1);
        assert_eq!(again.told(), [(3, false)]);
        assert!(is_storage(q.sync_point(lost.unwrap())));
    }

    #[test]
    fn a_segment_whose_sync_fails_as_it_rolls_takes_no_more_frames() {
        let dir = TempDir::new("dq");
        let faults = Arc::new(Faults::default());
        // One 200-byte frame per segment; the interval never comes, so rolling syncs.
        let q = open(&with_faults(
            DiskOptions {
                fsync: Fsync::Interval(Duration::from_secs(3600)),
                segment_bytes: 256,
                ..options(&dir, &["a"])
            },
            &faults,
        ));
        q.append(Signal::Logs, 1, payload(1, 200)).unwrap();
        faults.syncs.store(1, Ordering::SeqCst);
        assert!(is_storage(q.append(Signal::Logs, 1, payload(2, 200))));
        assert_eq!(q.append(Signal::Logs, 1, payload(2, 200)).unwrap(), 2);
        assert_eq!(segment_ids(&dir), [1, 2]);
        assert_eq!(counter(&q, "queue_storage_errors"), Some(1));
    }

    #[test]
    fn a_read_error_keeps_the_cursor_until_the_read_succeeds() {
        let dir = TempDir::new("dq");
        let faults = Arc::new(Faults::default());
        let q = open(&with_faults(
            DiskOptions {
                cache_bytes: 0,
                ..options(&dir, &["a"])
            },
            &faults,
        ));
        for i in 1..=3 {
            q.append(Signal::Logs, 2, payload(i, 50)).unwrap();
        }
        // Transient: tried again at once, and nothing shows but the count.
        faults.reads.store(2, Ordering::SeqCst);
        let taken = q.take("a", Signal::Logs, 1).unwrap();
        assert_eq!((taken[0].records, &taken[0].payload[..]), (2, &[1u8; 50][..]));
        assert_eq!(counter(&q, "queue_read_errors"), Some(2));
        // Persistent: nothing is handed out, so nothing can be acked past.
        faults.reads.store(u64::MAX, Ordering::SeqCst);
        for _ in 0..3 {
            assert!(is_storage(q.take("a", Signal::Logs, Seq::MAX)));
        }
        assert_eq!(counter(&q, "queue_read_stalled"), Some(1));
        assert!(counter(&q, "queue_read_errors").unwrap() >= 2 + 3 * READ_ATTEMPTS as u64);
        assert!(matches!(q.ack("a", Signal::Logs, 2), Err(CoreError::Usage(_))));
        assert_eq!(q.pending("a", Signal::Logs).unwrap().entries, 2);
        q.ack("a", Signal::Logs, 1).unwrap();
        faults.reads.store(0, Ordering::SeqCst);
        let taken = take_all(&q, "a", Signal::Logs);
        assert_eq!(seqs(&taken), [2, 3]);
        assert_eq!(&taken[1].payload[..], &[3u8; 50][..]);
        assert_eq!(counter(&q, "queue_read_stalled"), Some(0));
        assert_eq!(counter(&q, "queue_damaged_entries"), Some(0));
        q.ack("a", Signal::Logs, 3).unwrap();
    }

    #[test]
    fn a_read_error_mid_batch_hands_out_only_what_came_back() {
        let dir = TempDir::new("dq");
        let faults = Arc::new(Faults::default());
        // Seq 1 stays in the cache, seq 2 is too large for it.
        let q = open(&with_faults(
            DiskOptions {
                cache_bytes: 50,
                ..options(&dir, &["a"])
            },
            &faults,
        ));
        q.append(Signal::Logs, 1, payload(1, 10)).unwrap();
        q.append(Signal::Logs, 1, payload(2, 100)).unwrap();
        faults.reads.store(u64::MAX, Ordering::SeqCst);
        assert_eq!(seqs(&take_all(&q, "a", Signal::Logs)), [1]);
        assert_eq!(counter(&q, "queue_read_stalled"), Some(1));
        q.ack("a", Signal::Logs, 1).unwrap();
        faults.reads.store(0, Ordering::SeqCst);
        assert_eq!(&take_all(&q, "a", Signal::Logs)[0].payload[..], &[2u8; 100][..]);
    }

    /// A client's payload that holds well-formed frames, as an OTLP `bytes_value` can.
    fn payload_with_frames(frames: &[(Signal, Seq)]) -> Vec<u8> {
        let mut body = b"a log record's bytes_value:".to_vec();
        for &(signal, seq) in frames {
            let h = FrameHeader::new(signal, seq, u64::MAX, 0, b"smuggled").unwrap();
            body.extend(encode_frame(&h, b"smuggled"));
        }
        body.extend([0u8; 16]);
        body
    }

    #[test]
    fn a_frame_inside_a_torn_payload_is_not_recovered() {
        let dir = TempDir::new("dq");
        let o = options(&dir, &["a"]);
        let body = payload_with_frames(&[(Signal::Traces, Seq::MAX), (Signal::Traces, 1), (Signal::Logs, 2)]);
        {
            let q = open(&o);
            q.append(Signal::Logs, 1, payload(1, 20)).unwrap();
            q.append(Signal::Logs, 1, Payload::from(body.clone())).unwrap();
        }
        // The second request was torn just before its end: every smuggled frame is intact.
        let path = segment_path(&dir.0, 1);
        let end = fs::metadata(&path).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(end - 8)
            .unwrap();
        let q = open(&o);
        let r = q.report();
        assert_eq!((r.frames, r.records, r.cut_segments), (1, 1, 1));
        // The 8 zeros left at the end are not counted: zeros after the damage are what a
        // preallocated segment holds where nothing was written.
        assert_eq!(r.cut_bytes, (FRAME_HEADER + body.len() - 16) as u64);
        assert!(r.lost_frames <= 1, "{r:?}");
        assert_eq!(seqs(&take_all(&q, "a", Signal::Logs)), [1]);
        assert!(take_all(&q, "a", Signal::Traces).is_empty());
        assert_eq!(q.append(Signal::Traces, 1, payload(0, 5)).unwrap(), 1);
        assert_eq!(q.append(Signal::Logs, 1, payload(0, 5)).unwrap(), 2);
        drop(q);
        let q = open(&o);
        assert_eq!(q.append(Signal::Traces, 1, payload(0, 5)).unwrap(), 2);
    }

    #[test]
    fn resync_after_a_damaged_header_takes_only_frames_that_fit_the_sequence() {
        let dir = TempDir::new("dq");
        let o = options(&dir, &["a"]);
        let body = payload_with_frames(&[(Signal::Traces, Seq::MAX), (Signal::Logs, 1000), (Signal::Logs, 1)]);
        {
            let q = open(&o);
            q.append(Signal::Logs, 1, payload(1, 20)).unwrap();
            q.append(Signal::Logs, 1, Payload::from(body.clone())).unwrap();
            q.append(Signal::Logs, 1, payload(3, 20)).unwrap();
        }
        // Frame 2's length can no longer be trusted, so the scan looks at every byte of it.
        flip(
            &segment_path(&dir.0, 1),
            (SEGMENT_HEADER + FRAME_HEADER + 20 + 5) as u64,
        );
        let q = open(&o);
        let r = q.report();
        assert_eq!((r.frames, r.skipped_regions, r.lost_frames), (2, 1, 1), "{r:?}");
        assert_eq!(r.skipped_bytes, (FRAME_HEADER + body.len()) as u64);
        let logs = take_all(&q, "a", Signal::Logs);
        assert_eq!(seqs(&logs), [1, 3]);
        assert_eq!(&logs[1].payload[..], &[3u8; 20][..]);
        assert!(take_all(&q, "a", Signal::Traces).is_empty());
        assert_eq!(q.append(Signal::Traces, 1, payload(0, 5)).unwrap(), 1);
    }

    #[test]
    fn a_ledger_past_every_frame_is_reported_and_not_believed() {
        let dir = TempDir::new("dq");
        let o = options(&dir, &["a", "b"]);
        {
            let q = open(&o);
            assert_eq!(q.report().ledger_missing, 0, "a new queue has no ledger yet");
            for i in 1..=2 {
                q.append(Signal::Logs, 1, payload(i, 10)).unwrap();
            }
            take_all(&q, "a", Signal::Logs);
            q.ack("a", Signal::Logs, 2).unwrap();
        }
        // As a resurrected frame left it: positions past anything the segments hold.
        let ledger = Ledger {
            last: [10, Seq::MAX, 0],
            acked: vec![
                ("a".into(), Signal::Logs, 10),
                ("a".into(), Signal::Traces, Seq::MAX),
                ("b".into(), Signal::Logs, 0),
            ],
        };
        fs::write(dir.0.join(LEDGER_FILE), ledger.encode()).unwrap();
        let q = open(&o);
        let r = q.report();
        assert_eq!(
            (r.ledger_ahead, r.ledger_corrupt, r.pending_entries),
            (4, 0, 2),
            "{r:?}"
        );
        assert_eq!(
            seqs(&take_all(&q, "a", Signal::Logs)),
            [1, 2],
            "redelivered, not skipped"
        );
        assert_eq!(q.append(Signal::Traces, 1, payload(0, 5)).unwrap(), 1);
        assert_eq!(q.append(Signal::Logs, 1, payload(0, 5)).unwrap(), 3);
    }
}
