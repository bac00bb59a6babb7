//! Reading complete lines from a position in a generation chain, with a bounded buffer.
//!
//! The same reader serves ingest (which stops at the live end, never consuming bytes
//! past the last `\n` of a live file) and replay (which re-reads lines ingest already
//! counted). It moves from one generation to the next by itself: a sealed generation
//! is read to its end through the descriptor held for it, and a trailing partial line
//! is joined with the head of the next generation when the producer rotated.

use std::io;
use std::sync::Arc;

use super::generation::{Chain, Pos, Unavailable};
use super::record::RawLine;

/// Longest line consumed; a longer one is skipped up to its `\n` and reported.
pub const MAX_LINE: usize = 16 << 20;
/// Bytes of an over-long line kept to quote in the notice.
const TOO_LONG_HEAD: usize = 4096;
/// Largest `pread`.
const READ_CHUNK: usize = 64 << 10;
/// Smallest `pread` (when the file is not known to hold more).
const MIN_READ: usize = 4 << 10;
/// Buffers larger than this are shrunk back once empty, so a huge line's memory is
/// released afterwards.
const KEEP_CAPACITY: usize = 256 << 10;

/// What the reader found next.
#[derive(Debug)]
pub enum Next<'a> {
    /// A line, the position it starts at, and the position just after it (after its
    /// `\n`).
    Line(RawLine<'a>, Pos, Pos),
    /// Bytes of a generation vanished before they were read; the reader moved to the
    /// start of the next generation.
    Gap {
        /// How many bytes were lost (at least).
        bytes: u64,
    },
    /// Whole generations were rotated away before msbfs could open them, just before
    /// the one the reader now starts (or right after the one it just finished).
    Lost {
        /// How many (at least).
        generations: u64,
    },
    /// Nothing more is complete yet.
    Pending,
}

/// A cursor over the lines of one source.
#[derive(Debug)]
pub struct LineReader {
    chain: Arc<Chain>,
    /// Position of `buf[0]`.
    start: Pos,
    /// Bytes read; `buf[head..]` are not yet consumed. Consumed bytes are dropped in
    /// one move only when more must be read, so taking a line costs no copy.
    buf: Vec<u8>,
    /// Start of the unconsumed bytes in `buf`; every other index is relative to it.
    head: usize,
    /// Where the next read goes.
    next: Pos,
    /// True while `buf` holds a partial line of an older generation followed by
    /// bytes of `next.gen` (a line split by rotation).
    joined: bool,
    /// `buf[..scanned]` holds no `\n`.
    scanned: usize,
    /// Bytes to drop from the front of `buf` before the next search.
    consume: usize,
    /// Position the consumed bytes end at.
    consume_to: Pos,
    /// Length skipped so far of an over-long line (its head stays in `buf`).
    skipped: Option<u64>,
    /// The generation whose lost predecessors were last checked for.
    announced: Option<u32>,
}

impl LineReader {
    /// A reader positioned at `pos` of `chain`.
    pub fn new(chain: Arc<Chain>, pos: Pos) -> LineReader {
        LineReader {
            chain,
            start: pos,
            buf: Vec::new(),
            head: 0,
            next: pos,
            joined: false,
            scanned: 0,
            consume: 0,
            consume_to: pos,
            skipped: None,
            announced: None,
        }
    }

    /// Position of the first line not yet returned.
    pub fn pos(&self) -> Pos {
        if self.consume > 0 {
            self.consume_to
        } else {
            self.start
        }
    }

    /// Position up to which bytes were read from the files (consumed or buffered).
    pub fn read_to(&self) -> Pos {
        self.next
    }

    fn apply_consume(&mut self) {
        if self.consume == 0 {
            return;
        }
        self.head += self.consume;
        self.start = self.consume_to;
        self.joined = false;
        self.consume = 0;
        self.scanned = 0;
        if self.head == self.buf.len() {
            self.buf.clear();
            self.head = 0;
            if self.buf.capacity() > KEEP_CAPACITY {
                self.buf = Vec::new();
            }
        }
    }

    /// Position just after unconsumed byte `index`, which was read from `next.gen`
    /// (every newline is found in freshly read bytes, which all come from it).
    fn pos_after(&self, index: usize) -> Pos {
        let unread_after = (self.buf.len() - self.head - index - 1) as u64;
        Pos { gen: self.next.gen, off: self.next.off - unread_after }
    }

    fn emit(&mut self, len: usize, consumed: usize, end: Pos) -> Next<'_> {
        self.consume = consumed;
        self.consume_to = end;
        let start = self.start;
        match self.skipped.take() {
            Some(skipped) => Next::Line(
                RawLine::TooLong {
                    len: skipped + len as u64,
                    head: &self.buf[self.head..self.head + len.min(TOO_LONG_HEAD)],
                },
                start,
                end,
            ),
            None => Next::Line(RawLine::Complete(&self.buf[self.head..self.head + len]), start, end),
        }
    }

    /// Moves to the start of the generation after the current one, dropping anything
    /// buffered; used when a generation's remaining bytes are lost (and by replay,
    /// which repeats the gaps ingest recorded).
    pub fn skip_to_next_generation(&mut self) {
        self.apply_consume();
        let gen = self.next.gen + 1;
        self.reset_at(Pos { gen, off: 0 });
    }

    fn reset_at(&mut self, pos: Pos) {
        self.buf.clear();
        self.head = 0;
        self.start = pos;
        self.next = pos;
        self.joined = false;
        self.scanned = 0;
        self.skipped = None;
    }

    /// Returns the next complete line, a gap, or `Pending`.
    pub fn next_line(&mut self) -> io::Result<Next<'_>> {
        self.apply_consume();
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.head + self.scanned..]) {
                let len = self.scanned + i;
                let end = self.pos_after(len);
                return Ok(self.emit(len, len + 1, end));
            }
            // Drop consumed bytes before reading more: one move per buffer refill.
            self.buf.drain(..self.head);
            self.head = 0;
            self.scanned = self.buf.len();
            if self.buf.len() > MAX_LINE && self.skipped.is_none()
                || self.skipped.is_some() && self.buf.len() > TOO_LONG_HEAD * 2
            {
                let keep = TOO_LONG_HEAD.min(self.buf.len());
                let dropped = (self.buf.len() - keep) as u64;
                self.buf.truncate(keep);
                *self.skipped.get_or_insert(0) += dropped;
                self.scanned = keep;
            }
            let Some(gen) = self.chain.get(self.next.gen) else {
                return Ok(Next::Pending);
            };
            if self.next.off == 0 && self.buf.is_empty() && self.announced != Some(gen.seq()) {
                self.announced = Some(gen.seq());
                let generations = gen.take_lost_before();
                if generations > 0 {
                    return Ok(Next::Lost { generations });
                }
            }
            // Read about what the file is known to hold, so an idle source's poll
            // neither zeroes nor keeps a large buffer.
            let known = gen.sealed_len().unwrap_or(gen.seen_len()).saturating_sub(self.next.off);
            let old_len = self.buf.len();
            self.buf.resize(old_len + (known as usize).clamp(MIN_READ, READ_CHUNK), 0);
            let read = gen.read_at(&mut self.buf[old_len..], self.next.off);
            match read {
                Ok(Ok(n)) => {
                    self.buf.truncate(old_len + n);
                    if n > 0 {
                        self.next.off += n as u64;
                        continue;
                    }
                }
                Ok(Err(e)) => {
                    self.buf.truncate(old_len);
                    return Err(e);
                }
                Err(Unavailable::Closed) => {
                    // Reopened by the source when the file grows.
                    self.buf.truncate(old_len);
                    return Ok(Next::Pending);
                }
                Err(Unavailable::Released) => {
                    self.buf.truncate(old_len);
                    let sealed = gen.sealed_len().unwrap_or(self.next.off);
                    let lost = sealed.saturating_sub(self.next.off) + self.buf.len() as u64;
                    self.skip_to_next_generation();
                    if lost > 0 {
                        return Ok(Next::Gap { bytes: lost });
                    }
                    continue;
                }
            }
            // End of what the generation holds right now.
            let Some(sealed) = gen.sealed_len() else {
                if self.buf.is_empty() {
                    self.buf = Vec::new();
                }
                return Ok(Next::Pending);
            };
            if self.next.off < sealed {
                // A sealed file shorter than when sealed: its tail is gone.
                let lost = sealed - self.next.off + self.buf.len() as u64;
                self.skip_to_next_generation();
                return Ok(Next::Gap { bytes: lost });
            }
            let has_next = self.chain.get(self.next.gen + 1).is_some();
            if self.buf.is_empty() {
                let generations = gen.take_lost_after();
                if generations > 0 {
                    return Ok(Next::Lost { generations });
                }
                if !has_next {
                    return Ok(Next::Pending);
                }
                self.reset_at(Pos { gen: self.next.gen + 1, off: 0 });
                continue;
            }
            if gen.joins_next() {
                if !has_next || self.joined {
                    // Wait for the continuation; a partial spanning three generations
                    // is not something the producer writes, so it waits too.
                    return Ok(Next::Pending);
                }
                self.joined = true;
                self.next = Pos { gen: self.next.gen + 1, off: 0 };
                continue;
            }
            // A partial line that will never be completed: it is a line of its own.
            let len = self.buf.len();
            let end = Pos { gen: self.next.gen, off: sealed };
            let line_end = if has_next { Pos { gen: self.next.gen + 1, off: 0 } } else { end };
            self.next = line_end;
            return Ok(self.emit(len, len, line_end));
        }
    }
}
