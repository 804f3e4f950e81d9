//! LZ4 frames (`storage.compression`): what is stored, what comes back (from the cache, from disk
//! after a restart, across a change of the setting), and damage that only decoding can see.

use super::*;

fn options(dir: &TempDir, compress: bool) -> DiskOptions {
    DiskOptions {
        compress,
        fsync: Fsync::Always,
        ..DiskOptions::new(&dir.0, vec!["a".to_owned()], 1 << 24)
    }
}

/// A log-like payload that compresses: the same few fields over and over, with a counter.
fn compressible(n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..40 {
        out.extend_from_slice(format!("service.name=checkout level=info seq={n} item={i};").as_bytes());
    }
    out
}

/// Bytes that do not compress (a xorshift stream).
fn incompressible(seed: u64, len: usize) -> Vec<u8> {
    let mut next = crate::test_support::xorshift(seed | 1);
    (0..len).map(|_| next() as u8).collect()
}

fn take_all(q: &DiskQueue) -> Vec<Entry> {
    q.take("a", Signal::Logs, Seq::MAX).unwrap()
}

fn lens(q: &DiskQueue) -> Vec<usize> {
    let mut out = Vec::new();
    q.read("a", Signal::Logs, &mut |e| {
        out.push(e.len);
        true
    })
    .unwrap();
    out
}

/// Every frame on disk, oldest segment first.
fn frames_of(dir: &TempDir) -> Vec<FrameHeader> {
    let mut ids: Vec<u64> = fs::read_dir(&dir.0)
        .unwrap()
        .filter_map(|e| segment_id(e.ok()?.file_name().to_str()?))
        .collect();
    ids.sort_unstable();
    let scans = ids
        .into_iter()
        .map(|id| scan_segment(&fs::read(segment_path(&dir.0, id)).unwrap()));
    scans.flat_map(|scan| scan.frames.into_iter().map(|(h, _)| h)).collect()
}

#[test]
fn an_lz4_header_round_trips_and_keeps_the_raw_length() {
    let stored = lz4_pack(&compressible(1)).unwrap();
    let h = FrameHeader::lz4(Signal::Traces, 7, 3, 99, 2000, &stored).unwrap();
    let back = FrameHeader::decode(&h.encode()).unwrap();
    assert_eq!(back, h);
    assert_eq!((back.codec, back.raw_len, back.records), (Codec::Lz4, 2000, 3));
    assert_eq!(back.len as usize, stored.len());
    // The record count shares its field with the raw length: one that does not fit stays raw.
    assert_eq!(FrameHeader::lz4(Signal::Logs, 1, 1 << 32, 0, 10, &stored), None);
    // An unknown codec byte is damage, like any other reserved byte.
    let mut bytes = h.encode();
    bytes[33] = 2;
    let crc = crc32c::crc32c(&bytes[..40]);
    bytes[40..44].copy_from_slice(&crc.to_le_bytes());
    assert_eq!(FrameHeader::decode(&bytes), Err(FrameError::Corrupt));
    // A raw length no block of this size decodes to is refused before anything is allocated.
    let huge = FrameHeader { raw_len: u32::MAX, ..h };
    assert_eq!(FrameHeader::decode(&huge.encode()), Err(FrameError::Corrupt));
}

#[test]
fn compressible_payloads_are_stored_smaller_and_come_back_whole() {
    let dir = TempDir::new("dqz");
    let payloads: Vec<Vec<u8>> = (0..20).map(compressible).collect();
    let raw: usize = payloads.iter().map(Vec::len).sum();
    {
        let q = DiskQueue::open(options(&dir, true)).unwrap();
        for p in &payloads {
            q.append(Signal::Logs, 2, Payload::from(p.clone())).unwrap();
        }
        // Batching counts what the exporters will send, not what the disk holds.
        assert_eq!(lens(&q), payloads.iter().map(Vec::len).collect::<Vec<_>>());
        let cached = take_all(&q);
        assert!(cached.iter().zip(&payloads).all(|(e, p)| e.payload[..] == p[..]));
        let used = q.usage().bytes;
        assert!(used < raw / 4, "{used} bytes on disk for {raw} raw");
    }
    let frames = frames_of(&dir);
    assert_eq!(frames.len(), 20);
    assert!(frames.iter().all(|h| h.codec == Codec::Lz4 && h.records == 2));
    // After a restart nothing is cached: every payload is read from disk and decoded.
    let q = DiskQueue::open(options(&dir, true)).unwrap();
    let r = q.report();
    assert_eq!((r.frames, r.records, r.bytes), (20, 40, raw as u64));
    assert_eq!(lens(&q), payloads.iter().map(Vec::len).collect::<Vec<_>>());
    let read = take_all(&q);
    assert_eq!(read.len(), 20);
    for (e, p) in read.iter().zip(&payloads) {
        assert_eq!((&e.payload[..], e.records), (&p[..], 2));
    }
}

#[test]
fn a_payload_that_does_not_shrink_is_stored_as_it_came() {
    let dir = TempDir::new("dqz");
    let q = DiskQueue::open(options(&dir, true)).unwrap();
    let noise = incompressible(42, 4000);
    q.append(Signal::Logs, 1, Payload::from(noise.clone())).unwrap();
    q.append(Signal::Logs, 1, Payload::from(compressible(1))).unwrap();
    let codecs: Vec<Codec> = frames_of(&dir).iter().map(|h| h.codec).collect();
    assert_eq!(codecs, [Codec::Raw, Codec::Lz4]);
    drop(q);
    let q = DiskQueue::open(options(&dir, true)).unwrap();
    let read = take_all(&q);
    assert_eq!(&read[0].payload[..], &noise[..]);
    assert_eq!(&read[1].payload[..], &compressible(1)[..]);
}

#[test]
fn changing_the_setting_between_runs_reads_both_kinds() {
    let dir = TempDir::new("dqz");
    for (compress, n) in [(false, 0), (true, 1), (false, 2)] {
        let q = DiskQueue::open(options(&dir, compress)).unwrap();
        q.append(Signal::Logs, 1, Payload::from(compressible(n))).unwrap();
    }
    let codecs: Vec<Codec> = frames_of(&dir).iter().map(|h| h.codec).collect();
    assert_eq!(codecs, [Codec::Raw, Codec::Lz4, Codec::Raw]);
    for compress in [true, false] {
        let q = DiskQueue::open(options(&dir, compress)).unwrap();
        let read = take_all(&q);
        let expected: Vec<Vec<u8>> = (0..3).map(compressible).collect();
        assert_eq!(read.iter().map(|e| e.payload.to_vec()).collect::<Vec<_>>(), expected);
    }
}

/// Rewrites frame 0 of segment 1 with `edit` applied to its header, the CRCs made to match, so
/// only decoding the block can tell.
fn forge_first_frame(dir: &TempDir, edit: impl Fn(&mut FrameHeader), block: impl Fn(&mut Vec<u8>)) {
    let path = segment_path(&dir.0, 1);
    let mut buf = fs::read(&path).unwrap();
    let at = SEGMENT_HEADER;
    let (mut h, stored) = decode_frame(&buf[at..]).map(|(h, p)| (h, p.to_vec())).unwrap();
    let old_len = h.frame_len() as usize;
    let mut stored = stored;
    block(&mut stored);
    edit(&mut h);
    h.len = stored.len() as u32;
    h.payload_crc = crc32c::crc32c(&stored);
    let frame = encode_frame(&h, &stored);
    buf.splice(at..at + old_len, frame);
    fs::write(&path, buf).unwrap();
}

#[test]
fn a_block_that_does_not_decode_to_its_length_is_handed_out_empty_and_counted() {
    for case in 0..3 {
        let dir = TempDir::new("dqz");
        {
            let q = DiskQueue::open(options(&dir, true)).unwrap();
            q.append(Signal::Logs, 4, Payload::from(compressible(0))).unwrap();
            q.append(Signal::Logs, 4, Payload::from(compressible(1))).unwrap();
        }
        match case {
            // Claims more than the block holds.
            0 => forge_first_frame(&dir, |h| h.raw_len += 1, |_| {}),
            // Claims less: the block would overrun it.
            1 => forge_first_frame(&dir, |h| h.raw_len -= 1, |_| {}),
            // The block itself is cut short.
            _ => forge_first_frame(&dir, |_| {}, |b| b.truncate(b.len() / 2)),
        }
        let q = DiskQueue::open(options(&dir, true)).unwrap();
        let read = take_all(&q);
        assert_eq!(read.len(), 2, "case {case}");
        assert_eq!((read[0].records, read[0].payload.len()), (0, 0), "case {case}");
        assert_eq!(&read[1].payload[..], &compressible(1)[..], "case {case}");
        let damaged = q.counters().into_iter().find(|(k, _)| k == "queue_damaged_entries");
        assert_eq!(damaged.map(|(_, v)| v), Some(1), "case {case}");
    }
}

#[test]
fn damage_inside_a_compressed_frame_is_found_at_recovery() {
    let dir = TempDir::new("dqz");
    {
        let q = DiskQueue::open(options(&dir, true)).unwrap();
        for n in 0..3 {
            q.append(Signal::Logs, 1, Payload::from(compressible(n))).unwrap();
        }
    }
    let path = segment_path(&dir.0, 1);
    let mut buf = fs::read(&path).unwrap();
    buf[SEGMENT_HEADER + FRAME_HEADER + 5] ^= 0xff;
    fs::write(&path, buf).unwrap();
    let q = DiskQueue::open(options(&dir, true)).unwrap();
    let r = q.report();
    assert_eq!((r.frames, r.skipped_regions), (2, 1), "{r:?}");
    let read = take_all(&q);
    assert_eq!(
        read.iter().map(|e| e.payload.to_vec()).collect::<Vec<_>>(),
        [compressible(1), compressible(2)]
    );
}

#[test]
fn decoding_damaged_or_random_blocks_never_panics() {
    let mut next = crate::test_support::xorshift(0x9e37_79b9_7f4a_7c15u64);
    let real = lz4_pack(&compressible(7)).unwrap();
    let template = FrameHeader::lz4(Signal::Logs, 1, 1, 0, compressible(7).len(), &real).unwrap();
    let mut decoded = 0;
    for round in 0..3000 {
        let block = crate::test_support::mangled(&mut next, round, &real, 300, 4);
        let most = block.len() as u64 * LZ4_MAX_RATIO;
        let raw_len = if round % 3 == 0 {
            template.raw_len
        } else {
            (next() % (most + 1)) as u32
        };
        let h = FrameHeader {
            len: block.len() as u32,
            raw_len,
            ..template
        };
        if let Some(out) = unpack(&h, block) {
            assert_eq!(out.len(), raw_len as usize);
            decoded += 1;
        }
    }
    assert!(decoded > 0, "the undamaged rounds decode");
}
