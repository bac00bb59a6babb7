//! A benchmark-only file, enabled by the hidden `msbfs mount --bench-ceiling SIZE`:
//! `/.bench-ceiling`, `SIZE` bytes served from memory with no rendering and no store
//! read, so `scripts/bench.sh` can measure, in the same daemon and run, what FUSE
//! itself allows beside `merged.log`.

use std::sync::OnceLock;

/// Its name in the root directory.
pub const NAME: &str = ".bench-ceiling";
/// Its inode number (below every epoch's block).
pub const INO: u64 = 2;
/// The one file handle it is read through.
pub const FH: u64 = u64::MAX;

const PATTERN_LEN: usize = 1 << 20;

/// 1 MiB of lines that look like `merged.log`; the file repeats it.
fn pattern() -> &'static [u8] {
    static PATTERN: OnceLock<Vec<u8>> = OnceLock::new();
    PATTERN.get_or_init(|| {
        let line = b"2026-04-30T20:32:59.688Z stdout[7] the FUSE ceiling: bytes served from memory, nothing rendered\n";
        line.iter().copied().cycle().take(PATTERN_LEN).collect()
    })
}

/// Up to `max` bytes at `offset` of a ceiling file of `size` bytes (fewer where the
/// pattern repeats; none at the end).
pub fn read(size: u64, offset: u64, max: usize) -> &'static [u8] {
    if offset >= size {
        return &[];
    }
    let at = (offset % PATTERN_LEN as u64) as usize;
    let len = max.min(PATTERN_LEN - at).min((size - offset) as usize);
    &pattern()[at..at + len]
}
