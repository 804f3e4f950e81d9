//! The disk queue's `ledger` file: where its acked positions are stored, overwritten in place.
//!
//! Under `fsync = "always"` the ledger is written at every ack. Replacing the file whole (write a
//! temporary file, fsync it, rename it, fsync the directory) costs two journal commits each time,
//! and those stall the segment fsyncs that requests wait for. So the file holds two slots of equal
//! size, written in turn: an update is one `pwrite` into the older slot and one fdatasync of blocks
//! that already exist (no size or allocation change, so on a filesystem that overwrites in place,
//! such as ext4, no journal commit). A crash mid-write can
//! tear only the slot being written; the other one still holds the previous update, and the slot
//! with the higher sequence number whose checksum holds is the ledger.
//!
//! A slot is: magic `TGQLSLT1`, sequence u64, body length u32, the body (the ledger's own
//! encoding), CRC32C of everything before it; zeros pad it to the slot size. The file is
//! `2 × slot` bytes and is created whole (temporary file, rename) at open, when a body outgrows its
//! slot, and after any failed write (whose effect on the file is then unknown).
//!
//! A file that starts with the ledger's own magic was written whole, by a version before slots:
//! it is read as one body.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

const SLOT_MAGIC: [u8; 8] = *b"TGQLSLT1";
/// Magic, sequence, length.
const SLOT_HEADER: usize = 20;
const SLOT_CRC: usize = 4;
/// Slots are whole 4 KiB pages: on such pages a write never shares one with the other slot.
const PAGE: usize = 4096;

/// The ledger file while the queue is open: where the next update goes.
#[derive(Debug)]
pub struct LedgerFile {
    file: File,
    slot: usize,
    /// The slot the next update overwrites (the older one).
    next: usize,
    seq: u64,
}

impl LedgerFile {
    /// Writes a new file at `path` whole, through `tmp` and a rename, with `body` in the first
    /// slot; fsyncs the file and then `dir` when `durable`.
    pub fn create(dir: &Path, path: &Path, tmp: &Path, body: &[u8], durable: bool) -> io::Result<Self> {
        // Room for the body to grow (an exporter's name is the only variable part) before the
        // file must be created again.
        let slot = (2 * (SLOT_HEADER + body.len() + SLOT_CRC)).div_ceil(PAGE) * PAGE;
        let mut image = vec![0u8; 2 * slot];
        encode_slot(&mut image[..slot], 1, body);
        let file = File::create(tmp)?;
        file.write_all_at(&image, 0)?;
        if durable {
            file.sync_data()?;
        }
        fs::rename(tmp, path)?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(LedgerFile {
            file,
            slot,
            next: 1,
            seq: 1,
        })
    }

    /// Whether `body` fits a slot of this file.
    pub fn fits(&self, body: &[u8]) -> bool {
        SLOT_HEADER + body.len() + SLOT_CRC <= self.slot
    }

    /// Overwrites the older slot with `body` (fdatasynced when `durable`, after `before_sync`,
    /// which tests use to fail there). After an error, the file must not be written again:
    /// create a new one.
    pub fn update(&mut self, body: &[u8], durable: bool, before_sync: &dyn Fn() -> io::Result<()>) -> io::Result<()> {
        debug_assert!(self.fits(body));
        let seq = self.seq + 1;
        let mut slot = vec![0u8; SLOT_HEADER + body.len() + SLOT_CRC];
        encode_slot(&mut slot, seq, body);
        self.file.write_all_at(&slot, (self.next * self.slot) as u64)?;
        before_sync()?;
        if durable {
            self.file.sync_data()?;
        }
        self.seq = seq;
        self.next ^= 1;
        Ok(())
    }
}

fn encode_slot(out: &mut [u8], seq: u64, body: &[u8]) {
    let end = SLOT_HEADER + body.len();
    out[..8].copy_from_slice(&SLOT_MAGIC);
    out[8..16].copy_from_slice(&seq.to_le_bytes());
    out[16..20].copy_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    out[SLOT_HEADER..end].copy_from_slice(body);
    let crc = crc32c::crc32c(&out[..end]);
    out[end..end + SLOT_CRC].copy_from_slice(&crc.to_le_bytes());
}

/// The (sequence, body) of one slot, when its checksum holds.
fn decode_slot(slot: &[u8]) -> Option<(u64, &[u8])> {
    if slot.len() < SLOT_HEADER + SLOT_CRC || slot[..8] != SLOT_MAGIC {
        return None;
    }
    let seq = u64::from_le_bytes(slot[8..16].try_into().ok()?);
    let len = usize::try_from(u32::from_le_bytes(slot[16..20].try_into().ok()?)).ok()?;
    let end = SLOT_HEADER.checked_add(len)?;
    let stored = slot.get(end..end + SLOT_CRC)?;
    (crc32c::crc32c(&slot[..end]).to_le_bytes() == stored).then_some((seq, &slot[SLOT_HEADER..end]))
}

/// The two slots of a file written in slots: `None` for one written whole (`whole_magic` at its
/// start) or of a length no slotted file has.
fn slots<'a>(bytes: &'a [u8], whole_magic: &[u8]) -> Option<[&'a [u8]; 2]> {
    if bytes.starts_with(whole_magic) || bytes.is_empty() || !bytes.len().is_multiple_of(2) {
        return None;
    }
    let (first, second) = bytes.split_at(bytes.len() / 2);
    Some([first, second])
}

/// The ledger body a file's bytes hold: the newer intact slot, or the whole file when it was
/// written whole (`whole_magic` at its start). `None` when nothing checks out.
pub fn read_body<'a>(bytes: &'a [u8], whole_magic: &[u8]) -> Option<&'a [u8]> {
    if bytes.starts_with(whole_magic) {
        return Some(bytes);
    }
    let [first, second] = slots(bytes, whole_magic)?;
    match (decode_slot(first), decode_slot(second)) {
        (Some(a), Some(b)) => Some(if a.0 >= b.0 { a.1 } else { b.1 }),
        (a, b) => a.or(b).map(|(_, body)| body),
    }
}

/// Whether a file of slots has one that is neither intact nor never written (all zeros): an
/// update torn by a crash, or damage. `read_body` then gave the other slot's older update.
pub fn torn_slot(bytes: &[u8], whole_magic: &[u8]) -> bool {
    slots(bytes, whole_magic).is_some_and(|pair| {
        pair.into_iter()
            .any(|slot| decode_slot(slot).is_none() && slot.iter().any(|&b| b != 0))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk_queue::TempDir;

    fn paths(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        (dir.join("ledger"), dir.join("ledger.tmp"))
    }

    #[test]
    fn updates_alternate_slots_and_the_newest_intact_one_is_read() {
        let dir = TempDir::new("ledger");
        let (path, tmp) = paths(&dir.0);
        let mut file = LedgerFile::create(&dir.0, &path, &tmp, b"first", true).unwrap();
        assert!(!tmp.exists(), "renamed into place");
        let len = fs::metadata(&path).unwrap().len();
        assert_eq!(len % (2 * PAGE as u64), 0);
        assert_eq!(read_body(&fs::read(&path).unwrap(), b"WHOLE"), Some(&b"first"[..]));
        assert!(
            !torn_slot(&fs::read(&path).unwrap(), b"WHOLE"),
            "a slot never written is no damage"
        );
        for (i, body) in [&b"second"[..], b"third", b"fourth-longer"].into_iter().enumerate() {
            file.update(body, i % 2 == 0, &|| Ok(())).unwrap();
            assert_eq!(read_body(&fs::read(&path).unwrap(), b"WHOLE"), Some(body));
            assert_eq!(fs::metadata(&path).unwrap().len(), len, "written in place");
        }
    }

    #[test]
    fn a_torn_update_leaves_the_previous_one() {
        let dir = TempDir::new("ledger");
        let (path, tmp) = paths(&dir.0);
        let mut file = LedgerFile::create(&dir.0, &path, &tmp, b"one", true).unwrap();
        file.update(b"two", true, &|| Ok(())).unwrap();
        let slot = file.slot;
        // The next update goes to the first slot: tear it at every length, as a crash mid-write
        // might, over what it held before.
        let before = fs::read(&path).unwrap();
        let mut after = before.clone();
        encode_slot(&mut after[..slot], 3, b"three");
        for cut in 0..SLOT_HEADER + 5 + SLOT_CRC {
            let mut torn = before.clone();
            torn[..cut].copy_from_slice(&after[..cut]);
            assert_eq!(read_body(&torn, b"WHOLE"), Some(&b"two"[..]), "cut at {cut}");
        }
        assert_eq!(read_body(&after, b"WHOLE"), Some(&b"three"[..]));
        assert!(!torn_slot(&before, b"WHOLE") && !torn_slot(&after, b"WHOLE"));
        let mut torn = before.clone();
        torn[..SLOT_HEADER].copy_from_slice(&after[..SLOT_HEADER]);
        assert!(torn_slot(&torn, b"WHOLE"));
        // A flipped bit in the newer slot: the older one stands.
        let mut flipped = after.clone();
        flipped[SLOT_HEADER + 1] ^= 1;
        assert_eq!(read_body(&flipped, b"WHOLE"), Some(&b"two"[..]));
    }

    #[test]
    fn whole_files_and_damage() {
        assert_eq!(
            read_body(b"WHOLE and the rest", b"WHOLE"),
            Some(&b"WHOLE and the rest"[..])
        );
        assert_eq!(read_body(b"", b"WHOLE"), None);
        assert_eq!(read_body(&[0u8; 2 * PAGE], b"WHOLE"), None, "zeros");
        assert_eq!(read_body(&[0u8; 2 * PAGE + 1], b"WHOLE"), None, "odd length");
        // A length that runs past the slot.
        let mut slot = vec![0u8; PAGE];
        encode_slot(&mut slot, 1, b"x");
        slot[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode_slot(&slot), None);
    }

    #[test]
    fn fits_says_when_a_new_file_is_needed() {
        let dir = TempDir::new("ledger");
        let (path, tmp) = paths(&dir.0);
        let file = LedgerFile::create(&dir.0, &path, &tmp, &[7u8; 100], false).unwrap();
        assert!(file.fits(&[7u8; 200]), "room to grow");
        assert!(!file.fits(&vec![7u8; file.slot]));
    }
}
