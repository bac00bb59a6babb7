//! Unit tests of the source layer: the line reader over a generation chain and
//! `Source::refresh` against a real directory (rotation, truncation, replacement,
//! FIFOs, symlinks, inode reuse, generations lost unseen, descriptors released).

use super::*;
use crate::source::dir::LogsDir;
use crate::source::feed::Step;
use crate::source::generation::{FileId, Pos};
use crate::source::reader::Next;
use crate::source::record::RawLine;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// An owned copy of what the reader returned.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Line(Vec<u8>, Pos, Pos),
    TooLong { len: u64, head: Vec<u8>, start: Pos, end: Pos },
    Gap(u64),
    Lost(u64),
    Pending,
}

fn own(next: Next<'_>) -> Got {
    match next {
        Next::Line(RawLine::Complete(b), s, e) => Got::Line(b.to_vec(), s, e),
        Next::Line(RawLine::TooLong { len, head }, start, end) => Got::TooLong { len, head: head.to_vec(), start, end },
        Next::Gap { bytes } => Got::Gap(bytes),
        Next::Lost { generations } => Got::Lost(generations),
        Next::Pending => Got::Pending,
    }
}

fn pos(gen: u32, off: u64) -> Pos {
    Pos { gen, off }
}

fn line(text: &str, start: Pos, end: Pos) -> Got {
    Got::Line(text.as_bytes().to_vec(), start, end)
}

fn append(path: &Path, bytes: &[u8]) {
    let mut f = OpenOptions::new().create(true).append(true).open(path).unwrap();
    f.write_all(bytes).unwrap();
}

/// Pushes a generation reading `path` onto `chain`.
fn push_gen(chain: &Chain, path: &Path) -> Arc<Generation> {
    let file = File::open(path).unwrap();
    chain.push(FileIdentity::of_file(&file).unwrap(), 0, Arc::new(file))
}

fn read_reader(r: &mut LineReader) -> Vec<Got> {
    let mut out = Vec::new();
    loop {
        match own(r.next_line().unwrap()) {
            Got::Pending => return out,
            g => out.push(g),
        }
        assert!(out.len() < 100_000, "reader does not stop");
    }
}

/// Every step ingest could take now: a line's text, or a gap or loss notice. These
/// tests are about which lines are read, so the mark of a runtime line that follows
/// unread bytes (tested with the parser) is left out.
fn read_source(s: &mut Source) -> Vec<String> {
    let mut out = Vec::new();
    while s.peek().unwrap().is_some() {
        let head = s.take().unwrap();
        out.push(match head.step {
            Step::Record(r) => {
                let text = r.text.strip_prefix(record::START_LOST.as_bytes()).unwrap_or(&r.text);
                String::from_utf8_lossy(text).into_owned()
            }
            Step::Gap { bytes, .. } => format!("<gap {bytes}>"),
            Step::Lost { generations, .. } => format!("<lost {generations}>"),
        });
        assert!(out.len() < 100_000, "source does not stop");
    }
    out
}

fn texts(got: &[Got]) -> Vec<String> {
    got.iter()
        .map(|g| match g {
            Got::Line(b, _, _) => String::from_utf8_lossy(b).into_owned(),
            other => format!("{other:?}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------
// LineReader

#[test]
fn reader_returns_complete_lines_only_at_a_live_end() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a");
    append(&p, b"one\ntw");
    let chain = Arc::new(Chain::starting_at(0));
    push_gen(&chain, &p);
    let mut r = LineReader::new(chain.clone(), Pos::default());
    assert_eq!(read_reader(&mut r), [line("one", pos(0, 0), pos(0, 4))]);
    assert_eq!(r.pos(), pos(0, 4), "the partial is not consumed");
    assert_eq!(own(r.next_line().unwrap()), Got::Pending);
    append(&p, b"o");
    assert_eq!(own(r.next_line().unwrap()), Got::Pending);
    append(&p, b"\nthree\n");
    assert_eq!(read_reader(&mut r), [line("two", pos(0, 4), pos(0, 8)), line("three", pos(0, 8), pos(0, 14))]);
    assert_eq!(r.pos(), pos(0, 14));
}

#[test]
fn reader_handles_a_newline_split_across_reads() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a");
    // Lines whose `\n` sits exactly at, just before and just after a 64 KiB read boundary.
    let chunk = 64 << 10;
    let a = vec![b'a'; chunk - 1]; // `\n` is the last byte of the first read
    let b = vec![b'b'; chunk]; // `\n` is the first byte of the next read
    let c = vec![b'c'; chunk + 1];
    let mut content = Vec::new();
    for l in [&a, &b, &c] {
        content.extend_from_slice(l);
        content.push(b'\n');
    }
    append(&p, &content);
    let chain = Arc::new(Chain::starting_at(0));
    push_gen(&chain, &p);
    let mut r = LineReader::new(chain, Pos::default());
    let got = read_reader(&mut r);
    let mut off = 0u64;
    let mut want = Vec::new();
    for l in [&a, &b, &c] {
        let end = off + l.len() as u64 + 1;
        want.push(Got::Line(l.clone(), pos(0, off), pos(0, end)));
        off = end;
    }
    assert_eq!(got, want);

    // And a `\n` that arrives in a later write than its line.
    append(&p, b"late");
    assert_eq!(own(r.next_line().unwrap()), Got::Pending);
    append(&p, b"\n");
    assert_eq!(read_reader(&mut r), [line("late", pos(0, off), pos(0, off + 5))]);
}

#[test]
fn reader_joins_a_partial_tail_with_the_next_generation() {
    let dir = tempfile::tempdir().unwrap();
    let (p0, p1) = (dir.path().join("g0"), dir.path().join("g1"));
    append(&p0, b"x\npart");
    let chain = Arc::new(Chain::starting_at(0));
    let g0 = push_gen(&chain, &p0);
    let mut r = LineReader::new(chain.clone(), Pos::default());
    assert_eq!(read_reader(&mut r), [line("x", pos(0, 0), pos(0, 2))]);
    // Rotated: sealed with joins_next, but the next generation is not there yet.
    g0.seal(6, true);
    assert_eq!(read_reader(&mut r), []);
    append(&p1, b"");
    push_gen(&chain, &p1);
    // The continuation has not arrived yet either.
    assert_eq!(read_reader(&mut r), []);
    append(&p1, b"ial");
    assert_eq!(read_reader(&mut r), []);
    append(&p1, b"\nnext\n");
    assert_eq!(read_reader(&mut r), [line("partial", pos(0, 2), pos(1, 4)), line("next", pos(1, 4), pos(1, 9))]);
    assert_eq!(r.pos(), pos(1, 9));

    // A fresh reader (replay) positioned at the partial's start produces the same.
    let mut replay = LineReader::new(chain, pos(0, 2));
    assert_eq!(read_reader(&mut replay), [line("partial", pos(0, 2), pos(1, 4)), line("next", pos(1, 4), pos(1, 9))]);
}

#[test]
fn reader_without_joins_next_renders_the_partial_as_its_own_line() {
    let dir = tempfile::tempdir().unwrap();
    let (p0, p1) = (dir.path().join("g0"), dir.path().join("g1"));
    append(&p0, b"x\npart");
    append(&p1, b"ial\n");
    let chain = Arc::new(Chain::starting_at(0));
    push_gen(&chain, &p0).seal(6, false);
    push_gen(&chain, &p1);
    let mut r = LineReader::new(chain, Pos::default());
    let got = read_reader(&mut r);
    assert_eq!(got[0], line("x", pos(0, 0), pos(0, 2)));
    match &got[1] {
        Got::Line(b, s, _) => assert_eq!((b.as_slice(), *s), (&b"part"[..], pos(0, 2))),
        other => panic!("{other:?}"),
    }
    assert_eq!(got[2..], [line("ial", pos(1, 0), pos(1, 4))]);
}

#[test]
fn reader_partial_of_a_sealed_generation_without_successor_is_emitted_once() {
    let dir = tempfile::tempdir().unwrap();
    let p0 = dir.path().join("g0");
    append(&p0, b"x\nlast");
    let chain = Arc::new(Chain::starting_at(0));
    push_gen(&chain, &p0).seal(6, false);
    let mut r = LineReader::new(chain.clone(), Pos::default());
    let got = read_reader(&mut r);
    assert_eq!(texts(&got), ["x", "last"]);
    assert_eq!(read_reader(&mut r), [], "the partial must not be returned twice");
    let p1 = dir.path().join("g1");
    append(&p1, b"new\n");
    push_gen(&chain, &p1);
    assert_eq!(read_reader(&mut r), [line("new", pos(1, 0), pos(1, 4))]);
}

#[test]
fn reader_reports_a_gap_for_a_released_generation() {
    let dir = tempfile::tempdir().unwrap();
    let (p0, p1) = (dir.path().join("g0"), dir.path().join("g1"));
    append(&p0, b"aaa\nbbb\n");
    append(&p1, b"c\n");
    let chain = Arc::new(Chain::starting_at(0));
    let g0 = push_gen(&chain, &p0);
    g0.seal(8, true);
    push_gen(&chain, &p1);
    g0.release();
    let mut r = LineReader::new(chain, Pos::default());
    assert_eq!(read_reader(&mut r), [Got::Gap(8), line("c", pos(1, 0), pos(1, 2))]);
}

#[test]
fn reader_gap_counts_exactly_the_unread_bytes() {
    // A generation larger than one read: part of it is buffered when it is released.
    let dir = tempfile::tempdir().unwrap();
    let (p0, p1) = (dir.path().join("g0"), dir.path().join("g1"));
    let mut content = Vec::new();
    for i in 0..20_000 {
        content.extend_from_slice(format!("line {i:06}\n").as_bytes());
    }
    append(&p0, &content);
    append(&p1, b"next\n");
    let chain = Arc::new(Chain::starting_at(0));
    let g0 = push_gen(&chain, &p0);
    g0.seal(content.len() as u64, true);
    push_gen(&chain, &p1);
    let mut r = LineReader::new(chain, Pos::default());
    let mut line_bytes = 0u64;
    for _ in 0..10 {
        match own(r.next_line().unwrap()) {
            Got::Line(b, _, e) => {
                line_bytes += b.len() as u64 + 1;
                assert_eq!(e.off, line_bytes);
            }
            other => panic!("{other:?}"),
        }
    }
    g0.release();
    let got = read_reader(&mut r);
    let mut gap = None;
    for g in &got {
        match g {
            Got::Line(b, s, _) if s.gen == 0 => line_bytes += b.len() as u64 + 1,
            Got::Gap(n) => gap = Some(*n),
            _ => {}
        }
    }
    assert_eq!(line_bytes + gap.expect("a gap is reported"), content.len() as u64, "{:?}", got.last());
    assert_eq!(got.last(), Some(&line("next", pos(1, 0), pos(1, 5))));
}

#[test]
fn reader_skips_a_line_longer_than_the_limit_and_continues() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a");
    let long = 17usize << 20;
    {
        let mut f = OpenOptions::new().create(true).append(true).open(&p).unwrap();
        f.write_all(b"first\n").unwrap();
        let block = vec![b'z'; 1 << 20];
        for _ in 0..17 {
            f.write_all(&block).unwrap();
        }
        f.write_all(b"\nnext\n").unwrap();
    }
    let chain = Arc::new(Chain::starting_at(0));
    push_gen(&chain, &p);
    let mut r = LineReader::new(chain.clone(), Pos::default());
    let got = read_reader(&mut r);
    assert_eq!(got.len(), 3, "{:?}", texts(&got).iter().map(|t| t.len()).collect::<Vec<_>>());
    assert_eq!(got[0], line("first", pos(0, 0), pos(0, 6)));
    let long_end = 6 + long as u64 + 1;
    match &got[1] {
        Got::TooLong { len, head, start, end } => {
            assert_eq!(*len, long as u64);
            assert!(!head.is_empty() && head.len() <= 4096 && head.iter().all(|b| *b == b'z'));
            assert_eq!(*start, pos(0, 6));
            assert_eq!(*end, pos(0, long_end), "end position of the over-long line");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(got[2], line("next", pos(0, long_end), pos(0, long_end + 5)), "the line after it");
    assert_eq!(r.pos(), pos(0, long_end + 5));
    // A replay starting after the long line (e.g. at a checkpoint) agrees.
    let mut replay = LineReader::new(chain, got[1].clone().end());
    assert_eq!(read_reader(&mut replay), [line("next", pos(0, long_end), pos(0, long_end + 5))]);
}

impl Got {
    fn end(self) -> Pos {
        match self {
            Got::Line(_, _, e) | Got::TooLong { end: e, .. } => e,
            other => panic!("{other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Source::refresh

struct Dir {
    _tmp: tempfile::TempDir,
    path: PathBuf,
}

impl Dir {
    fn new() -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().to_path_buf();
        Dir { _tmp: tmp, path }
    }
    fn p(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
    fn append(&self, name: &str, bytes: &[u8]) {
        append(&self.p(name), bytes);
    }
    /// The producer's rotation: `X.3→X.4 … X→X.1` (no new `X`).
    fn rename_chain(&self, base: &str) {
        for n in (1..4).rev() {
            let _ = std::fs::rename(self.p(&format!("{base}.{n}")), self.p(&format!("{base}.{}", n + 1)));
        }
        std::fs::rename(self.p(base), self.p(&format!("{base}.1"))).unwrap();
    }
}

fn lines_of(prefix: &str, n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| format!("{prefix} {i}\n").into_bytes()).collect()
}

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix} {i}")).collect()
}

fn adopted(events: &[ChainEvent]) -> Vec<u32> {
    events.iter().filter_map(|e| if let ChainEvent::Adopted(r) = e { Some(r.seq) } else { None }).collect()
}

/// `runtime.log` text passes through the parser unchanged, so these tests use it for
/// rotation (it rotates like `exec.log`).
const ROT: SourceKind = SourceKind::Runtime;

#[test]
fn refresh_discovers_the_chain_oldest_first() {
    let d = Dir::new();
    d.append("runtime.log.2", &lines_of("two", 3));
    d.append("runtime.log.1", &lines_of("one", 2));
    d.append("runtime.log", &lines_of("live", 2));
    let mut s = Source::new(ROT, &d.path);
    assert!(read_source(&mut s).is_empty(), "nothing is opened before refresh");
    s.refresh(true);
    assert_eq!(adopted(&s.take_events()), [0, 1, 2]);
    let gens = s.chain().all();
    assert!(gens[0].sealed_len().is_some() && gens[0].joins_next());
    assert!(gens[1].sealed_len().is_some() && gens[1].joins_next());
    assert_eq!(gens[2].sealed_len(), None, "the live file is not sealed");
    let want: Vec<String> = [names("two", 3), names("one", 2), names("live", 2)].concat();
    assert_eq!(read_source(&mut s), want);
    // Once read, the rotated generations' descriptors are released and forgotten.
    s.refresh(true);
    assert!(s.take_events().is_empty(), "nothing new");
    assert_eq!(s.chain().all().iter().map(|g| g.seq()).collect::<Vec<_>>(), [2]);
    assert!(read_source(&mut s).is_empty());
}

#[test]
fn rotation_reads_the_old_generation_through_its_descriptor_then_releases_it() {
    let d = Dir::new();
    for (name, tag) in
        [("runtime.log.4", "g4"), ("runtime.log.3", "g3"), ("runtime.log.2", "g2"), ("runtime.log.1", "g1")]
    {
        d.append(name, &lines_of(tag, 3));
    }
    d.append("runtime.log", &lines_of("live", 3));
    let mut s = Source::new(ROT, &d.path);
    s.refresh(true);
    assert_eq!(adopted(&s.take_events()), [0, 1, 2, 3, 4]);
    let oldest = s.chain().get(0).unwrap();
    let first = format!("{}g4 0", record::START_LOST).into_bytes();
    assert_eq!(s.peek().unwrap().map(|h| h.step.record().text.clone()), Some(first), "the oldest at first sight");
    s.take();
    // The producer writes more, then rotates: the old X.4 (which msbfs is reading) is
    // destroyed by the rename of X.3 onto it.
    d.append("runtime.log", &lines_of("more", 2));
    d.rename_chain("runtime.log");
    d.append("runtime.log", &lines_of("new", 2));
    s.refresh(true);
    assert_eq!(adopted(&s.take_events()), [5]);
    assert!(!oldest.is_released(), "the generation being read is still held");
    let old_live = s.chain().get(4).unwrap();
    assert!(old_live.sealed_len().is_some() && old_live.joins_next());
    let want: Vec<String> = [
        names("g4", 3)[1..].to_vec(),
        names("g3", 3),
        names("g2", 3),
        names("g1", 3),
        names("live", 3),
        names("more", 2),
        names("new", 2),
    ]
    .concat();
    assert_eq!(read_source(&mut s), want);
    s.refresh(true);
    assert!(oldest.is_released() && old_live.is_released(), "read to their end: released");
    assert_eq!(s.chain().all().len(), 1, "only the live generation is held");
}

#[test]
fn the_moment_without_a_live_file_loses_nothing() {
    let d = Dir::new();
    d.append("runtime.log", b"L1\npart");
    let mut s = Source::new(ROT, &d.path);
    s.refresh(true);
    assert_eq!(read_source(&mut s), ["L1"]);
    d.append("runtime.log", b"ial-head");
    d.rename_chain("runtime.log");
    // runtime.log does not exist now.
    s.refresh(true);
    assert!(read_source(&mut s).is_empty(), "waits for the continuation");
    d.append("runtime.log", b"-tail\nL3\n");
    s.refresh(true);
    assert_eq!(read_source(&mut s), ["partial-head-tail", "L3"]);
    assert_eq!(s.mark().pos, Pos { gen: 1, off: 9 });
}

#[test]
fn copytruncate_starts_a_new_generation_without_repeating_lines() {
    let d = Dir::new();
    d.append("kernel.log", &lines_of("[    0.000100] old line", 5));
    let mut s = Source::new(SourceKind::Kernel, &d.path);
    s.refresh(true);
    assert_eq!(read_source(&mut s).len(), 5);
    // Truncated in place and rewritten with less than before.
    let f = OpenOptions::new().write(true).open(d.p("kernel.log")).unwrap();
    f.set_len(0).unwrap();
    d.append("kernel.log", &lines_of("[    0.000200] new", 2));
    s.take_events();
    s.refresh(true);
    assert_eq!(adopted(&s.take_events()), [1]);
    assert_eq!(read_source(&mut s), names("[    0.000200] new", 2));
    // Truncated and rewritten with more than before: the first bytes differ.
    f.set_len(0).unwrap();
    d.append("kernel.log", &lines_of("[    0.000300] renewed and longer than before", 9));
    s.refresh(true);
    assert_eq!(adopted(&s.take_events()), [2]);
    assert_eq!(read_source(&mut s), names("[    0.000300] renewed and longer than before", 9));
    // Plain appends are not mistaken for truncation, and no snapshot reports the
    // rewritten file as new.
    d.append("kernel.log", &lines_of("[    0.000400] appended", 1));
    s.refresh(true);
    assert!(adopted(&s.take_events()).is_empty());
    assert_eq!(read_source(&mut s), names("[    0.000400] appended", 1));
}

#[test]
fn copytruncate_of_unread_bytes_is_a_gap() {
    let d = Dir::new();
    let old = lines_of("old", 3);
    d.append("kernel.log", &old);
    let mut s = Source::new(SourceKind::Kernel, &d.path);
    s.refresh(true);
    // Seen but not read yet, then truncated.
    let f = OpenOptions::new().write(true).open(d.p("kernel.log")).unwrap();
    f.set_len(0).unwrap();
    d.append("kernel.log", b"n\n");
    s.refresh(true);
    assert_eq!(read_source(&mut s), [format!("<gap {}>", old.len()), "n".into()]);
}

#[test]
fn replacement_by_a_new_inode_is_a_new_generation() {
    let d = Dir::new();
    d.append("runtime.log", b"a\nb\n");
    let mut s = Source::new(ROT, &d.path);
    s.refresh(true);
    assert_eq!(read_source(&mut s), ["a", "b"]);
    d.append("runtime.log", b"c\ntail-without-newline");
    d.append("runtime.log.tmp", b"fresh\n");
    std::fs::rename(d.p("runtime.log.tmp"), d.p("runtime.log")).unwrap();
    s.take_events();
    s.refresh(true);
    assert_eq!(adopted(&s.take_events()), [1]);
    assert_eq!(read_source(&mut s), ["c", "tail-without-newline", "fresh"]);
}

#[test]
fn a_fifo_named_like_a_log_is_never_opened() {
    let d = Dir::new();
    nix::unistd::mkfifo(&d.p("exec.log"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    nix::unistd::mkfifo(&d.p("runtime.log.1"), nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
    d.append("runtime.log", b"ok\n");
    let dir = d.path.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut exec = Source::new(SourceKind::Exec, &dir);
        let mut runtime = Source::new(ROT, &dir);
        exec.refresh(true);
        runtime.refresh(true);
        let lines = read_source(&mut runtime);
        let _ = tx.send((exec.chain().all().len(), runtime.chain().all().len(), lines));
    });
    let (exec_len, runtime_len, lines) = rx.recv_timeout(Duration::from_secs(10)).expect("refresh blocked on a FIFO");
    assert_eq!((exec_len, runtime_len), (0, 1));
    assert_eq!(lines, ["ok"]);
    // open_regular itself refuses it without blocking.
    assert!(LogsDir::open(&d.path).unwrap().open_file("exec.log").is_err());
}

#[test]
fn a_symlink_named_like_a_log_is_not_followed() {
    let d = Dir::new();
    d.append("elsewhere", b"secret\n");
    std::os::unix::fs::symlink(d.p("elsewhere"), d.p("runtime.log")).unwrap();
    std::os::unix::fs::symlink(d.p("elsewhere"), d.p("runtime.log.1")).unwrap();
    let mut s = Source::new(ROT, &d.path);
    s.refresh(true);
    assert!(s.chain().all().is_empty());
    assert!(read_source(&mut s).is_empty());
    assert!(LogsDir::open(&d.path).unwrap().open_file("runtime.log").is_err());
    // Replaced by a regular file: picked up.
    std::fs::remove_file(d.p("runtime.log")).unwrap();
    d.append("runtime.log", b"real\n");
    s.refresh(true);
    assert_eq!(read_source(&mut s), ["real"]);
}

#[test]
fn a_reused_inode_number_with_the_same_first_bytes_is_a_new_generation() {
    let d = Dir::new();
    d.append("runtime.log.1", &lines_of("same start", 2));
    d.append("runtime.log", &lines_of("live", 2));
    let mut s = Source::new(ROT, &d.path);
    s.refresh(true);
    assert_eq!(read_source(&mut s).len(), 4);
    s.refresh(true);
    let old_id = LogsDir::open(&d.path).unwrap().entry("runtime.log.1").unwrap().identity.id;
    // Rotate: the old runtime.log.1 is deleted, and the new runtime.log, created right
    // after, often gets its inode number; it starts with the very same bytes.
    std::fs::remove_file(d.p("runtime.log.1")).unwrap();
    d.rename_chain("runtime.log");
    d.append("runtime.log", &lines_of("same start", 3));
    let reused = FileId::of(&std::fs::metadata(d.p("runtime.log")).unwrap()) == old_id;
    s.refresh(true);
    assert_eq!(read_source(&mut s), names("same start", 3), "inode reused: {reused}");
}

#[test]
fn a_deleted_live_file_recreated_is_read_from_its_start() {
    let d = Dir::new();
    d.append("kernel.log", b"[    0.1] a\n");
    let mut s = Source::new(SourceKind::Kernel, &d.path);
    s.refresh(true);
    assert_eq!(read_source(&mut s), ["[    0.1] a"]);
    std::fs::remove_file(d.p("kernel.log")).unwrap();
    s.refresh(true);
    d.append("kernel.log", b"[    0.2] b\n");
    s.take_events();
    s.refresh(true);
    assert_eq!(adopted(&s.take_events()), [1]);
    assert_eq!(read_source(&mut s), ["[    0.2] b"]);
}

#[test]
fn copytruncate_then_rotation_before_a_refresh_loses_nothing() {
    // The live file is truncated in place and rewritten, then renamed into the chain,
    // all between two refreshes: the descriptor msbfs holds now reads new content.
    for new_len in [1usize, 2, 3] {
        let d = Dir::new();
        d.append("runtime.log", &lines_of("old-line", 2));
        let mut s = Source::new(ROT, &d.path);
        s.refresh(true);
        assert_eq!(read_source(&mut s).len(), 2);
        let f = OpenOptions::new().write(true).open(d.p("runtime.log")).unwrap();
        f.set_len(0).unwrap();
        // Shorter than, as long as, and longer than what was read before.
        d.append("runtime.log", &lines_of("new-line", new_len));
        d.rename_chain("runtime.log");
        d.append("runtime.log", &lines_of("next", 1));
        s.refresh(true);
        let want = [names("new-line", new_len), names("next", 1)].concat();
        assert_eq!(read_source(&mut s), want, "rewritten with {new_len} lines");
    }
}

#[test]
fn a_truncated_generation_is_born_when_it_was_truncated() {
    // Kernel timestamps are the generation's birth plus the uptime stamp; after a
    // copytruncate the new generation began at the truncation, not when the inode was
    // created.
    let d = Dir::new();
    d.append("kernel.log", b"[    0.100000] first boot\n");
    let mut s = Source::new(SourceKind::Kernel, &d.path);
    s.refresh(true);
    assert_eq!(read_source(&mut s).len(), 1);
    std::thread::sleep(Duration::from_millis(300));
    let before_truncate =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let f = OpenOptions::new().write(true).open(d.p("kernel.log")).unwrap();
    f.set_len(0).unwrap();
    d.append("kernel.log", b"[    0.100000] second boot\n");
    s.refresh(true);
    let g0 = s.chain().get(0).map(|g| g.birth_ms);
    let g1 = s.chain().get(1).unwrap();
    assert!(
        g1.birth_ms >= before_truncate - 5,
        "new generation born at {}, first {g0:?}, truncated at {before_truncate}",
        g1.birth_ms
    );
}

#[test]
fn snapshots_after_each_rotation_keep_every_generation_of_a_fast_producer() {
    // The watcher snapshots the chain after every change it sees; ingest refreshes only
    // after seven rotations, when the first generations have already been destroyed by
    // the rename chain.
    let d = Dir::new();
    let mut s = Source::new(ROT, &d.path);
    d.append("runtime.log", &lines_of("g0", 2));
    s.tracker().lock().note_create();
    s.refresh(true);
    for k in 1..=7 {
        d.rename_chain("runtime.log");
        d.append("runtime.log", &lines_of(&format!("g{k}"), 2));
        let mut tracker = s.tracker().lock();
        tracker.note_create();
        tracker.snapshot();
    }
    assert!(!d.p("runtime.log.5").exists() && d.p("runtime.log.4").exists());
    s.refresh(false);
    let want: Vec<String> = (0..=7).flat_map(|k| names(&format!("g{k}"), 2)).collect();
    assert_eq!(read_source(&mut s), want, "every generation once, in creation order");
    assert_eq!(s.tracker().lock().lost(), 0);
}

#[test]
fn generations_destroyed_before_any_snapshot_are_announced_where_they_were() {
    let d = Dir::new();
    let mut s = Source::new(ROT, &d.path);
    d.append("runtime.log", &lines_of("g0", 2));
    s.tracker().lock().note_create();
    s.refresh(true);
    assert_eq!(read_source(&mut s), names("g0", 2));
    for k in 1..=8 {
        d.rename_chain("runtime.log");
        d.append("runtime.log", &lines_of(&format!("g{k}"), 1));
        s.tracker().lock().note_create();
    }
    s.refresh(true);
    // g1..g3 were destroyed unseen; g4..g8 are in the chain.
    let want: Vec<String> =
        std::iter::once("<lost 3>".to_string()).chain((4..=8).flat_map(|k| names(&format!("g{k}"), 1))).collect();
    assert_eq!(read_source(&mut s), want);
}

#[test]
fn chain_events_record_what_a_replay_needs() {
    let d = Dir::new();
    d.append("runtime.log", b"a\n");
    let mut s = Source::new(ROT, &d.path);
    s.refresh(true);
    read_source(&mut s);
    d.rename_chain("runtime.log");
    d.append("runtime.log", b"b\n");
    s.take_events();
    s.refresh(true);
    let events = s.take_events();
    match &events[..] {
        [ChainEvent::Updated(old), ChainEvent::Adopted(new)] => {
            assert_eq!((old.seq, old.sealed), (0, Some((2, true))));
            assert_eq!((new.seq, new.sealed, new.fingerprint.as_slice()), (1, None, &b"b\n"[..]));
        }
        other => panic!("{other:?}"),
    }
    // A generation found again by identity and first bytes; a different file is not it.
    let rec = s.chain().get(1).unwrap().record();
    assert!(find_generation(ROT, &d.path, &rec).is_some());
    let mut other = rec.clone();
    other.fingerprint = b"x\n".to_vec();
    assert!(find_generation(ROT, &d.path, &other).is_none());
}

#[test]
fn a_live_file_closed_while_idle_and_rotated_away_still_announces_what_was_lost() {
    let d = Dir::new();
    d.append("runtime.log", b"a\n");
    let mut s = Source::new(ROT, &d.path);
    s.refresh(true);
    assert_eq!(read_source(&mut s), ["a"]);
    s.close_if_idle(0);
    assert!(s.chain().last().unwrap().file().is_none(), "closed while idle");
    // Six rotations before msbfs looks again: one new generation is lost unseen.
    for i in 1..=6 {
        d.rename_chain("runtime.log");
        d.append("runtime.log", format!("g{i}\n").as_bytes());
        s.tracker().lock().note_create();
    }
    s.refresh(true);
    let got = read_source(&mut s);
    // Reopened by identity where still on disk, every generation left is read once;
    // the one destroyed unseen is announced (a lower bound: a file born in the tick
    // the watch began cannot be told from one born before it).
    let lines: Vec<&str> = got.iter().map(String::as_str).filter(|l| !l.starts_with("<lost")).collect();
    assert_eq!(lines, ["g2", "g3", "g4", "g5", "g6"], "{got:?}");
    assert!(got.len() <= 6 && got.iter().all(|l| !l.starts_with("<lost") || l == "<lost 1>"), "{got:?}");
}
