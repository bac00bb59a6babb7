//! Crash-safe framing of the journal: each record is `[len: u32 LE][crc32: u32 LE]`
//! followed by `len` payload bytes. A frame with `len == 0`, a length past the sanity
//! bound, a short read or a checksum mismatch ends the valid part of the file: that is
//! how a torn or corrupt tail (SIGKILL mid-write, a damaged disk, preallocated zeros)
//! is found and cut.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Bytes of a frame header.
pub const FRAME_HEADER: usize = 8;
/// Largest payload accepted; anything larger is corruption.
pub const MAX_PAYLOAD: usize = 64 << 20;

/// Appends `payload` as one frame.
pub fn push_frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&frame_header(&[payload]));
    out.extend_from_slice(payload);
}

/// The header of one frame whose payload is `parts` joined (so a payload made of
/// several buffers is written with one `pwritev`, without joining them first).
pub fn frame_header(parts: &[&[u8]]) -> [u8; FRAME_HEADER] {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    debug_assert!(len > 0 && len <= MAX_PAYLOAD);
    let mut crc = crc32fast::Hasher::new();
    parts.iter().for_each(|p| crc.update(p));
    let mut header = [0; FRAME_HEADER];
    header[..4].copy_from_slice(&(len as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc.finalize().to_le_bytes());
    header
}

/// Writes `parts` one after the other at `offset` of `file`, with as few `pwritev`
/// calls as the kernel allows.
pub fn write_all_vectored_at(file: &File, parts: &[&[u8]], mut offset: u64) -> io::Result<()> {
    let mut parts: Vec<&[u8]> = parts.iter().copied().filter(|p| !p.is_empty()).collect();
    let mut first = 0;
    while first < parts.len() {
        let slices: Vec<io::IoSlice<'_>> = parts[first..].iter().map(|p| io::IoSlice::new(p)).collect();
        let written = nix::sys::uio::pwritev(file, &slices, offset as libc::off_t).map_err(io::Error::from)?;
        if written == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "pwritev wrote nothing"));
        }
        offset += written as u64;
        let mut left = written;
        while first < parts.len() && left >= parts[first].len() {
            left -= parts[first].len();
            first += 1;
        }
        if left > 0 {
            parts[first] = &parts[first][left..];
        }
    }
    Ok(())
}

/// Reads frames sequentially from a file, from a physical offset, until the end of the
/// valid part. Memory is bounded by the largest frame plus one read chunk.
#[derive(Debug)]
pub struct FrameReader<'a> {
    file: &'a File,
    /// Physical offset of the next frame.
    at: u64,
    buf: Vec<u8>,
    /// Physical offset of `buf[0]`.
    buf_at: u64,
    eof: bool,
    /// Size of the next read: it starts small (most journals are small) and doubles
    /// up to [`READ_CHUNK`].
    chunk: usize,
}

const READ_CHUNK: usize = 256 << 10;
const FIRST_READ: usize = 4 << 10;

impl<'a> FrameReader<'a> {
    /// A reader of the frames of `file` starting at physical offset `at`.
    pub fn new(file: &'a File, at: u64) -> FrameReader<'a> {
        FrameReader { file, at, buf: Vec::new(), buf_at: at, eof: false, chunk: FIRST_READ }
    }

    /// Physical offset just after the last valid frame returned (where the valid part
    /// ends once [`FrameReader::next_frame`] returned `None`).
    pub fn position(&self) -> u64 {
        self.at
    }

    /// Makes `buf` hold at least `need` bytes from `self.at`, unless the file ends.
    fn fill(&mut self, need: usize) -> io::Result<bool> {
        let start = (self.at - self.buf_at) as usize;
        if self.buf.len() - start >= need {
            return Ok(true);
        }
        self.buf.drain(..start);
        self.buf_at = self.at;
        while self.buf.len() < need && !self.eof {
            let old = self.buf.len();
            let want = (need - old).max(self.chunk);
            self.chunk = (self.chunk * 2).min(READ_CHUNK);
            self.buf.resize(old + want, 0);
            let n = self.file.read_at(&mut self.buf[old..], self.buf_at + old as u64)?;
            self.buf.truncate(old + n);
            if n == 0 {
                self.eof = true;
            }
        }
        Ok(self.buf.len() >= need)
    }

    /// The next valid frame's payload and its physical offset, or `None` at the end of
    /// the valid part (end of file, or the first torn or corrupt frame).
    pub fn next_frame(&mut self) -> io::Result<Option<(u64, &[u8])>> {
        if !self.fill(FRAME_HEADER)? {
            return Ok(None);
        }
        let start = (self.at - self.buf_at) as usize;
        let head = &self.buf[start..start + FRAME_HEADER];
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
        if len == 0 || len > MAX_PAYLOAD || !self.fill(FRAME_HEADER + len)? {
            return Ok(None);
        }
        let start = (self.at - self.buf_at) as usize;
        let payload = &self.buf[start + FRAME_HEADER..start + FRAME_HEADER + len];
        if crc32fast::hash(payload) != crc {
            return Ok(None);
        }
        let frame_at = self.at;
        self.at += (FRAME_HEADER + len) as u64;
        Ok(Some((frame_at, payload)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn frames_of(bytes: &[u8]) -> (Vec<Vec<u8>>, u64) {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        let mut r = FrameReader::new(&f, 0);
        let mut out = Vec::new();
        while let Some((_, p)) = r.next_frame().unwrap() {
            out.push(p.to_vec());
        }
        (out, r.position())
    }

    #[test]
    fn valid_frames_are_read_and_any_torn_or_corrupt_tail_ends_them() {
        let mut bytes = Vec::new();
        push_frame(&mut bytes, b"one");
        push_frame(&mut bytes, &vec![7u8; 300_000]);
        let two = bytes.len() as u64;
        push_frame(&mut bytes, b"three");
        let (frames, end) = frames_of(&bytes);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[1].len(), 300_000);
        assert_eq!(end, bytes.len() as u64);
        // Every truncation inside the last frame keeps exactly the first two.
        for cut in two as usize..bytes.len() {
            assert_eq!(frames_of(&bytes[..cut]), (frames[..2].to_vec(), two), "cut at {cut}");
        }
        // A flipped payload byte, zeros (preallocation) or a huge length end the frames.
        let mut bad = bytes.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert_eq!(frames_of(&bad).1, two);
        let mut zeros = bytes[..two as usize].to_vec();
        zeros.extend_from_slice(&[0; 64]);
        assert_eq!(frames_of(&zeros).1, two);
        let mut huge = bytes[..two as usize].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(frames_of(&huge).1, two);
    }
}
