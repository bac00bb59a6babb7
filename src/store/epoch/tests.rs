use super::*;

use std::os::unix::fs::MetadataExt;

/// Appends commits of rendered-looking lines, a boundary checkpoint every `segment`
/// bytes (and one at 0), and remembers every byte for comparison.
struct Writer {
    store: EpochStore,
    bytes: Vec<u8>,
    segment: u64,
    next_boundary: u64,
    line: u64,
}

fn header() -> Header {
    Header { epoch: 0xfeed, ino_base: 1 << 24, created_ms: 5, name: "web".into(), owner: b"dir-id".to_vec() }
}

impl Writer {
    fn new(dir: &Path, segment: u64) -> Writer {
        let store = EpochStore::create(dir, header(), Arc::default(), &FilePool::new(16)).unwrap();
        Writer { store, bytes: Vec::new(), segment, next_boundary: 0, line: 0 }
    }

    /// One commit of `lines` lines; a resume (non-boundary) checkpoint at its end when
    /// `resume`.
    fn commit(&mut self, lines: usize, resume: bool) {
        let start = self.bytes.len() as u64;
        let mut bytes = Vec::new();
        let mut cuts = Vec::new();
        let mut payload = Vec::new();
        for _ in 0..lines {
            let out = start + bytes.len() as u64;
            if out >= self.next_boundary {
                cuts.push(Cut { out, payload_at: payload.len() as u32, boundary: true });
                payload.extend_from_slice(b"checkpoint;");
                self.next_boundary = out + self.segment;
            }
            payload.extend_from_slice(format!("take {};", self.line).as_bytes());
            bytes.extend_from_slice(format!("2026-04-30T20:32:59.688Z stdout[1] line {:08}\n", self.line).as_bytes());
            self.line += 1;
        }
        if resume {
            cuts.push(Cut { out: start + bytes.len() as u64, payload_at: payload.len() as u32, boundary: false });
            payload.extend_from_slice(b"resume;");
        }
        let ts = (self.line as i64, self.line as i64 + 1);
        self.store
            .append(&Commit { bytes: &bytes, payload: &payload, extra: &[], cuts: &cuts, ts_range: Some(ts) })
            .unwrap();
        self.bytes.extend_from_slice(&bytes);
    }
}

fn read_all(store: &EpochStore) -> Vec<u8> {
    let mut out = Vec::new();
    while (out.len() as u64) < store.size() {
        out.extend(store.read(out.len() as u64, 100_000).unwrap());
    }
    out
}

fn reopen(dir: &Path) -> (EpochStore, Recovered) {
    EpochStore::open(dir, Arc::default(), &FilePool::new(16)).unwrap_or_else(|e| panic!("reopen: {}", e.0))
}

fn resume_payload(r: &Recovered) -> &[u8] {
    let first = &r.commits[0];
    &first.payload[first.cuts[r.resume_cut].payload_at as usize..]
}

#[test]
fn appended_bytes_read_back_and_segments_close_at_boundaries() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::new(dir.path(), 4096);
    for n in [1, 10, 200, 3, 150] {
        w.commit(n, false);
    }
    assert_eq!(w.store.size(), w.bytes.len() as u64);
    assert_eq!(read_all(&w.store), w.bytes);
    assert_eq!(w.store.read(w.store.size(), 10).unwrap(), b"");
    assert_eq!(w.store.read(5, 7).unwrap(), &w.bytes[5..12]);
    let segs = w.store.retained_segments();
    assert_eq!(segs.len(), 364 * 49 / 4116, "{segs:?}");
    assert_eq!(segs[0].start, 0);
    for pair in segs.windows(2) {
        assert_eq!(pair[0].end, pair[1].start);
        assert!(pair[0].end - pair[0].start >= 4096);
    }
    let (open_start, _, _) = w.store.open_segment();
    assert_eq!(open_start, segs.last().unwrap().end);
    // Every segment starts at a line.
    for s in &segs {
        assert!(s.start == 0 || w.bytes[s.start as usize - 1] == b'\n');
    }
}

#[test]
fn reopening_resumes_at_the_last_checkpoint_with_identical_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::new(dir.path(), 4096);
    for n in [50, 100, 100, 7] {
        w.commit(n, false);
    }
    w.commit(3, true);
    let segs = w.store.retained_segments();
    drop(w.store);
    let (store, rec) = reopen(dir.path());
    assert!(rec.repairs.is_empty(), "{:?}", rec.repairs);
    assert!(rec.damaged.is_empty());
    assert_eq!(store.size(), w.bytes.len() as u64);
    assert_eq!(read_all(&store), w.bytes);
    assert_eq!(store.header(), &header());
    assert_eq!(resume_payload(&rec), b"resume;");
    assert_eq!(rec.commits.len(), 1);
    assert_eq!(store.retained_segments(), segs);
    // Appending continues where it stood.
    let mut w2 = Writer { store, bytes: w.bytes, segment: 4096, next_boundary: w.next_boundary, line: w.line };
    w2.commit(100, false);
    assert_eq!(read_all(&w2.store), w2.bytes);
}

#[test]
fn a_torn_journal_tail_loses_only_the_unfinished_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::new(dir.path(), 4096);
    w.commit(100, false);
    w.commit(1, true);
    let before_last = w.bytes.len();
    w.commit(20, false);
    drop(w.store);
    let journal = dir.path().join("journal");
    let len = std::fs::metadata(&journal).unwrap().len();
    // Find the logical end: the file may carry preallocated zeros.
    let raw = std::fs::read(&journal).unwrap();
    let end = raw.iter().rposition(|&b| b != 0).unwrap() as u64 + 1;
    assert!(end <= len);
    OpenOptions::new().write(true).open(&journal).unwrap().set_len(end - 3).unwrap();
    let (store, rec) = reopen(dir.path());
    assert_eq!(store.size(), before_last as u64, "{:?}", rec.repairs);
    assert_eq!(read_all(&store), &w.bytes[..before_last]);
    assert!(rec.repairs.iter().any(|r| r.contains("unpublished")), "{:?}", rec.repairs);
    assert_eq!(resume_payload(&rec), b"resume;");
}

#[test]
fn damaged_data_is_reported_and_repaired_or_replaced_by_a_notice() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::new(dir.path(), 1 << 20);
    w.commit(100, false);
    w.commit(1, true);
    w.commit(40, false);
    w.commit(40, false);
    drop(w.store);
    let data_path = dir.path().join("data");
    let data = OpenOptions::new().write(true).open(&data_path).unwrap();
    let len = w.bytes.len() as u64;
    data.write_all_at(b"XX", len - 10).unwrap();
    let (store, rec) = reopen(dir.path());
    assert_eq!(store.size(), len, "a published byte is never cut");
    assert_eq!(rec.damaged.len(), 1, "{:?}", rec.repairs);
    let damaged = &rec.commits[rec.damaged[0]];
    assert_eq!(damaged.data_end, len);
    // The checkpoint chosen lies before the damage.
    assert_eq!(resume_payload(&rec), b"resume;");
    let good = &w.bytes[damaged.data_start as usize..damaged.data_end as usize];
    assert!(!store.repair(damaged, b"wrong").unwrap());
    assert!(store.repair(damaged, good).unwrap());
    assert_eq!(read_all(&store), w.bytes);
    drop(store);
    // Truncated data: missing bytes; giving up writes a notice of the same length.
    data.set_len(len - 100).unwrap();
    let (store, rec) = reopen(dir.path());
    assert_eq!(store.size(), len);
    let damaged: Vec<&StoredCommit> = rec.damaged.iter().map(|&i| &rec.commits[i]).collect();
    assert!(!damaged.is_empty());
    for c in &damaged {
        store.give_up(c).unwrap();
    }
    let all = read_all(&store);
    assert_eq!(all.len() as u64, len);
    let from = damaged[0].data_start as usize;
    assert_eq!(&all[..from], &w.bytes[..from]);
    let text = String::from_utf8_lossy(&all[from..]).into_owned();
    assert!(text.contains(" msbfs ") && text.contains("were damaged"), "{text}");
}

#[test]
fn a_corrupt_index_tail_is_rebuilt_from_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::new(dir.path(), 2048);
    for _ in 0..20 {
        w.commit(30, false);
    }
    let segs = w.store.retained_segments();
    drop(w.store);
    let path = dir.path().join("segments");
    let len = std::fs::metadata(&path).unwrap().len();
    let f = OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&[0xAB; 5], len - 40).unwrap();
    f.set_len(len - 3).unwrap();
    let (store, rec) = reopen(dir.path());
    assert!(rec.repairs.iter().any(|r| r.starts_with("segments:")), "{:?}", rec.repairs);
    let got = store.retained_segments();
    assert_eq!(got.len(), segs.len());
    for (a, b) in got.iter().zip(&segs) {
        assert_eq!((a.start, a.end, a.journal_off, a.cut), (b.start, b.end, b.journal_off, b.cut));
    }
    assert_eq!(read_all(&store), w.bytes);
    // A broken header (the dropped prefix) is taken from the data file's holes.
    drop(store);
    f.write_all_at(&[0; 8], 0).unwrap();
    let (store, rec) = reopen(dir.path());
    assert!(rec.repairs.iter().any(|r| r.contains("header unreadable")), "{:?}", rec.repairs);
    assert_eq!(store.dropped(), 0);
    assert_eq!(read_all(&store), w.bytes);
}

#[test]
fn dropped_segments_read_as_notices_of_their_exact_length_and_free_their_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::new(dir.path(), 64 << 10);
    for _ in 0..40 {
        w.commit(500, false);
    }
    let segs = w.store.retained_segments();
    assert!(segs.len() >= 10);
    let blocks_before = std::fs::metadata(dir.path().join("data")).unwrap().blocks();
    let footprint = w.store.footprint();
    for _ in 0..3 {
        assert!(w.store.drop_oldest().is_some());
    }
    assert!(w.store.footprint() < footprint);
    let h = segs[2].end;
    assert_eq!(w.store.dropped(), h);
    assert!(std::fs::metadata(dir.path().join("data")).unwrap().blocks() < blocks_before);
    let all = read_all(&w.store);
    assert_eq!(all.len(), w.bytes.len());
    assert_eq!(&all[h as usize..], &w.bytes[h as usize..]);
    let prefix = String::from_utf8(all[..h as usize].to_vec()).unwrap();
    for seg in &segs[..3] {
        let text = &prefix[seg.start as usize..seg.end as usize];
        let first = text.lines().next().unwrap();
        assert!(
            first.contains(&format!("{} bytes from offset {} were dropped", seg.end - seg.start, seg.start)),
            "{first}"
        );
        assert!(text.ends_with('\n'));
        assert!(text.lines().all(|l| l.len() < 4096 && l.contains(" msbfs ")));
    }
    // Reads that straddle the boundary and reads through another offset agree.
    assert_eq!(w.store.read(h - 10, 20).unwrap(), &all[h as usize - 10..h as usize + 10]);
    drop(w.store);
    let (store, _) = reopen(dir.path());
    assert_eq!(store.dropped(), h);
    assert_eq!(read_all(&store), all, "dropped text is the same after a restart");
}

#[test]
fn the_journal_is_compacted_once_dropped_segments_dominate_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = Writer::new(dir.path(), 16 << 10);
    // Many small commits make a long journal.
    for _ in 0..10_000 {
        w.commit(2, false);
    }
    let journal_before = std::fs::metadata(dir.path().join("journal")).unwrap().len();
    while w.store.retained_segments().len() > 2 {
        w.store.drop_oldest().unwrap();
    }
    let journal_after = std::fs::metadata(dir.path().join("journal")).unwrap().len();
    assert!(journal_after < journal_before / 2, "{journal_before} -> {journal_after}");
    // What is retained still replays from its checkpoint, and appends continue.
    let seg = w.store.retained_segments()[0];
    let mut seen = 0;
    w.store
        .commits_from(seg.journal_off, |c| {
            seen += 1;
            c.data_end < seg.end
        })
        .unwrap();
    assert!(seen > 0);
    w.commit(10, false);
    let all = read_all(&w.store);
    let h = w.store.dropped() as usize;
    assert_eq!(&all[h..], &w.bytes[h..]);
    drop(w.store);
    let (store, rec) = reopen(dir.path());
    assert!(rec.repairs.is_empty(), "{:?}", rec.repairs);
    assert_eq!(read_all(&store), all);
}

#[test]
fn an_unreadable_header_or_another_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let w = Writer::new(dir.path(), 4096);
    drop(w.store);
    let journal = dir.path().join("journal");
    let mut raw = std::fs::read(&journal).unwrap();
    raw[10] ^= 0xff;
    std::fs::write(&journal, &raw).unwrap();
    let err = EpochStore::open(dir.path(), Arc::default(), &FilePool::new(16)).unwrap_err();
    assert!(err.0.contains("header"), "{}", err.0);
    let mut frame = Vec::new();
    let mut p = vec![HEADER_TAG];
    push_varint(&mut p, 99);
    push_frame(&mut frame, &p);
    std::fs::write(&journal, &frame).unwrap();
    let err = EpochStore::open(dir.path(), Arc::default(), &FilePool::new(16)).unwrap_err();
    assert!(err.0.contains("format version 99"), "{}", err.0);
}
