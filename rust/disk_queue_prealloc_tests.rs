//! Preallocated segments: recovery of zero tails, rolls into prepared spares, and the fallback
//! when a spare cannot be made.

use super::tests::wait_until;
use super::*;

const PAYLOAD: usize = 200;
const FRAME: u64 = (FRAME_HEADER + PAYLOAD) as u64;

fn options(dir: &TempDir, segment_bytes: u64) -> DiskOptions {
    DiskOptions {
        segment_bytes,
        fsync: Fsync::Always,
        ..DiskOptions::new(&dir.0, vec!["a".to_owned()], 1 << 20)
    }
}

fn payload(fill: u8) -> Payload {
    Payload::from(vec![fill; PAYLOAD])
}

fn take_seqs(q: &DiskQueue) -> Vec<Seq> {
    let taken = q.take("a", Signal::Logs, Seq::MAX).unwrap();
    for e in &taken {
        assert_eq!(&e.payload[..], &[(e.seq % 251) as u8; PAYLOAD][..], "seq {}", e.seq);
    }
    taken.iter().map(|e| e.seq).collect()
}

fn counter(q: &DiskQueue, name: &str) -> u64 {
    q.counters().into_iter().find(|(k, _)| k == name).map_or(0, |(_, v)| v)
}

fn file_len(dir: &TempDir, id: u64) -> u64 {
    fs::metadata(segment_path(&dir.0, id)).unwrap().len()
}

fn spare_ready(q: &DiskQueue) -> bool {
    q.shared.lock().spare.is_some()
}

/// Appends seq `next` on, until the active segment is `id`; returns the next seq.
fn append_until_active(q: &DiskQueue, mut next: Seq, id: u64) -> Seq {
    while q.shared.lock().active != id {
        assert_eq!(q.append(Signal::Logs, 1, payload((next % 251) as u8)).unwrap(), next);
        next += 1;
        assert!(next < 1000, "segment {id} never became active");
    }
    next
}

/// Appends seq `next` on until a spare is ready (waiting for the preparer once it was asked);
/// returns the next seq.
fn fill_until_spare(q: &DiskQueue, mut next: Seq) -> Seq {
    let start = next;
    while !spare_ready(q) {
        assert_eq!(q.append(Signal::Logs, 1, payload((next % 251) as u8)).unwrap(), next);
        next += 1;
        wait_until("the preparer answered", || !q.shared.lock().preparing);
        assert!(next - start < 100, "no spare was prepared");
    }
    next
}

/// Frames written the old way (a segment that grows), as a buffer.
fn grown_segment(frames: u8) -> Vec<u8> {
    let mut buf = SegmentHeader { id: 1, starts: [1; 3] }.encode().to_vec();
    for seq in 1..=u64::from(frames) {
        let body = vec![seq as u8; PAYLOAD];
        let h = FrameHeader::new(Signal::Logs, seq, 1, 0, &body).unwrap();
        buf.extend_from_slice(&encode_frame(&h, &body));
    }
    buf
}

#[test]
fn the_zero_tail_is_found_whatever_its_alignment() {
    for len in [0usize, 1, 63, 64, 65, 200, 4096] {
        for tail in [0usize, 1, 63, 64, 65, 1000] {
            let mut buf = vec![7u8; len];
            buf.resize(len + tail, 0);
            assert_eq!(zero_tail_start(&buf), len, "{len} + {tail} zeros");
        }
    }
    let mut buf = vec![0u8; 300];
    buf[100] = 1;
    assert_eq!(zero_tail_start(&buf), 101);
}

#[test]
fn a_zero_tail_is_the_clean_end_of_a_segment() {
    let grown = grown_segment(3);
    let mut buf = grown.clone();
    buf.resize(64 << 10, 0);
    let scan = scan_segment(&buf);
    assert_eq!(scan.frames.len(), 3);
    assert_eq!((scan.cut_at, scan.skipped_bytes, scan.skipped_regions), (None, 0, 0));
    assert_eq!(scan.data_end, grown.len() as u64);
    // A last payload that ends in zeros is whole, not part of the tail.
    let body = [9u8, 0, 0, 0];
    let h = FrameHeader::new(Signal::Logs, 4, 1, 0, &body).unwrap();
    let mut buf = grown.clone();
    buf.extend_from_slice(&encode_frame(&h, &body));
    buf.resize(buf.len() + 500, 0);
    let scan = scan_segment(&buf);
    assert_eq!((scan.frames.len(), scan.cut_at), (4, None));

    // On open: nothing skipped, cut or lost, and only the written bytes are counted as used.
    let dir = TempDir::new("prealloc");
    let path = segment_path(&dir.0, 1);
    fs::write(&path, &grown).unwrap();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(64 << 10)
        .unwrap();
    let q = DiskQueue::open(options(&dir, 64 << 10)).unwrap();
    let r = q.report();
    assert_eq!(
        (
            r.frames,
            r.cut_bytes,
            r.cut_segments,
            r.skipped_bytes,
            r.bad_headers,
            r.lost_frames
        ),
        (3, 0, 0, 0, 0, 0),
        "{r:?}"
    );
    assert_eq!(file_len(&dir, 1), 64 << 10, "a clean segment is not truncated");
    assert_eq!(q.usage().bytes as u64, grown.len() as u64 + SEGMENT_HEADER as u64);
    assert_eq!(q.take("a", Signal::Logs, Seq::MAX).unwrap().len(), 3);
}

#[test]
fn a_torn_frame_before_the_zero_tail_is_cut() {
    let dir = TempDir::new("prealloc");
    let path = segment_path(&dir.0, 1);
    let mut buf = grown_segment(3);
    let good = buf.len() - FRAME as usize;
    // The third frame's last 150 payload bytes never reached the disk; the rest is zeros.
    buf.truncate(buf.len() - 150);
    buf.resize(64 << 10, 0);
    fs::write(&path, &buf).unwrap();
    let q = DiskQueue::open(options(&dir, 64 << 10)).unwrap();
    let r = q.report();
    assert_eq!((r.frames, r.cut_segments, r.skipped_bytes), (2, 1, 0), "{r:?}");
    assert_eq!(r.cut_bytes, FRAME - 150, "the torn bytes, not the zeros after them");
    assert_eq!(file_len(&dir, 1), good as u64);
    assert_eq!(q.take("a", Signal::Logs, Seq::MAX).unwrap().len(), 2);
    assert_eq!(q.append(Signal::Logs, 1, payload(3)).unwrap(), 3);
}

#[test]
fn a_zero_gap_before_later_frames_is_damage() {
    let dir = TempDir::new("prealloc");
    let mut buf = grown_segment(4);
    // The write of frame 2 was lost; frames 3 and 4 and the zero tail were not.
    let at = SEGMENT_HEADER + FRAME as usize;
    buf[at..at + FRAME as usize].fill(0);
    buf.resize(64 << 10, 0);
    fs::write(segment_path(&dir.0, 1), &buf).unwrap();
    let q = DiskQueue::open(options(&dir, 64 << 10)).unwrap();
    let r = q.report();
    assert_eq!(
        (r.frames, r.skipped_regions, r.skipped_bytes, r.lost_frames, r.cut_bytes),
        (3, 1, FRAME, 1, 0),
        "{r:?}"
    );
    let seqs: Vec<Seq> = q
        .take("a", Signal::Logs, Seq::MAX)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, [1, 3, 4]);
}

#[test]
fn a_segment_whose_header_never_reached_the_disk_is_empty_not_damaged() {
    let dir = TempDir::new("prealloc");
    fs::write(segment_path(&dir.0, 1), vec![0u8; 8192]).unwrap();
    let q = DiskQueue::open(options(&dir, 8192)).unwrap();
    let r = q.report();
    assert_eq!(
        (r.segments, r.bad_headers, r.cut_bytes, r.frames, r.removed_segments),
        (1, 0, 0, 0, 1)
    );
    assert_eq!(q.append(Signal::Logs, 1, payload(1)).unwrap(), 1);
}

#[test]
fn appends_roll_into_prepared_segments_and_survive_a_reopen() {
    let dir = TempDir::new("prealloc");
    let o = options(&dir, 4096);
    let q = DiskQueue::open(o.clone()).unwrap();
    // The first segment grows; past half of it a spare is prepared, and the next append moves
    // into the spare although the first segment is not full.
    let mut next = fill_until_spare(&q, 1);
    let first = next - 1;
    assert_eq!(
        file_len(&dir, 1),
        SEGMENT_HEADER as u64 + first * FRAME,
        "grown as written"
    );
    next = append_until_active(&q, next, 2);
    assert_eq!(file_len(&dir, 2), 4096, "made at its full size");
    assert_eq!(counter(&q, "queue_segments_preallocated"), 1);
    // The next spare, then a roll into it once segment 2 is full.
    next = fill_until_spare(&q, next);
    next = append_until_active(&q, next, 3);
    assert_eq!((file_len(&dir, 2), file_len(&dir, 3)), (4096, 4096));
    assert_eq!(counter(&q, "queue_segments_preallocated"), 2);
    let in_two = (4096 - SEGMENT_HEADER as u64) / FRAME;
    assert_eq!(next - 1, first + in_two + 1);
    // Used bytes are what was written, not the files' lengths.
    let written = 3 * SEGMENT_HEADER as u64 + (next - 1) * FRAME;
    assert_eq!(q.usage().bytes as u64, written);
    assert_eq!(counter(&q, "queue_prealloc_errors"), 0);
    drop(q);
    assert!(!dir.0.join(SPARE_FILE).exists(), "an unused spare is removed at close");

    // Reopened: every frame back, nothing reported as damage, and appends go on.
    let q = DiskQueue::open(o).unwrap();
    let r = q.report();
    assert_eq!(
        (
            r.frames,
            r.cut_segments,
            r.skipped_regions,
            r.bad_headers,
            r.lost_frames
        ),
        (next - 1, 0, 0, 0, 0),
        "{r:?}"
    );
    assert_eq!(q.usage().bytes as u64, written + SEGMENT_HEADER as u64);
    let last = next - 1;
    assert_eq!(take_seqs(&q), (1..=last).collect::<Vec<_>>());
    q.ack("a", Signal::Logs, last).unwrap();
    next = fill_until_spare(&q, next);
    next = append_until_active(&q, next, 5);
    assert_eq!(file_len(&dir, 5), 4096);
    assert_eq!(q.append(Signal::Logs, 1, payload((next % 251) as u8)).unwrap(), next);
    assert_eq!(take_seqs(&q), (last + 1..=next).collect::<Vec<_>>());
}

#[test]
fn a_spare_that_cannot_be_made_falls_back_to_a_growing_segment() {
    let dir = TempDir::new("prealloc");
    let faults = Arc::new(Faults::default());
    faults.preallocs.store(1, Ordering::SeqCst);
    let q = DiskQueue::open(DiskOptions {
        faults: Some(Arc::clone(&faults)),
        ..options(&dir, 4096)
    })
    .unwrap();
    let mut next = 1;
    while counter(&q, "queue_prealloc_errors") == 0 {
        assert_eq!(q.append(Signal::Logs, 1, payload(next as u8)).unwrap(), next);
        next += 1;
        wait_until("the preparer answered", || !q.shared.lock().preparing);
        assert!(next < 100, "no spare was asked for");
    }
    assert_eq!(counter(&q, "queue_storage_errors"), 1);
    assert!(!dir.0.join(SPARE_FILE).exists(), "the partial spare is removed");
    // Not asked again for this segment: it fills, and the roll makes a growing segment.
    next = append_until_active(&q, next, 2);
    assert!(!spare_ready(&q) && counter(&q, "queue_segments_preallocated") == 0);
    assert_eq!(file_len(&dir, 2), SEGMENT_HEADER as u64 + FRAME);
    // The new segment asks again, and this time the spare is made and used.
    next = fill_until_spare(&q, next);
    next = append_until_active(&q, next, 3);
    assert_eq!(
        (file_len(&dir, 3), counter(&q, "queue_segments_preallocated")),
        (4096, 1)
    );
    assert_eq!(take_seqs(&q), (1..next).collect::<Vec<_>>());
    assert_eq!(counter(&q, "queue_prealloc_errors"), 1);
}

#[test]
fn a_queue_bound_smaller_than_a_segment_bounds_the_spare() {
    let dir = TempDir::new("prealloc");
    let q = DiskQueue::open(DiskOptions {
        max_bytes: 4096,
        ..options(&dir, 1 << 20)
    })
    .unwrap();
    fill_until_spare(&q, 1);
    assert_eq!(fs::metadata(dir.0.join(SPARE_FILE)).unwrap().len(), 4096);
}
