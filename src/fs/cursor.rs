//! The `user.cursor` xattr (DESIGN §2.5): standard base64 of `[count: u8]` followed by
//! `count` × `[generation: u64 LE][offset: u64 LE]`, positions in the order exec.log,
//! runtime.log, kernel.log, then `[epoch id][merged.log offset]`.

use base64::Engine as _;

use crate::timeline::CursorPos;

/// Name of the xattr on `merged.log`.
pub const CURSOR_XATTR: &str = "user.cursor";

/// Encodes the three source positions and the merged position of `epoch` at `size`.
pub fn encode(sources: &[CursorPos; 3], epoch: u64, size: u64) -> String {
    let mut raw = Vec::with_capacity(1 + 4 * 16);
    raw.push(4u8);
    for p in sources.iter().chain(std::iter::once(&CursorPos { generation: epoch, offset: size })) {
        raw.extend_from_slice(&p.generation.to_le_bytes());
        raw.extend_from_slice(&p.offset.to_le_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// Decodes a cursor into its positions (any count), or `None` if malformed.
pub fn decode(text: &str) -> Option<Vec<CursorPos>> {
    let raw = base64::engine::general_purpose::STANDARD.decode(text.trim()).ok()?;
    let (&count, rest) = raw.split_first()?;
    if rest.len() != usize::from(count) * 16 {
        return None;
    }
    Some(
        rest.chunks_exact(16)
            .map(|c| CursorPos {
                generation: u64::from_le_bytes(c[..8].try_into().expect("8 bytes")),
                offset: u64::from_le_bytes(c[8..].try_into().expect("8 bytes")),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_has_the_documented_layout() {
        let sources = [
            CursorPos { generation: 12, offset: 345 },
            CursorPos { generation: 13, offset: 0 },
            CursorPos { generation: 0, offset: 0 },
        ];
        let text = encode(&sources, 0xdead_beef, 4096);
        let raw = base64::engine::general_purpose::STANDARD.decode(&text).unwrap();
        assert_eq!(raw.len(), 65);
        assert_eq!(raw[0], 4);
        assert_eq!(&raw[1..9], &12u64.to_le_bytes());
        assert_eq!(&raw[9..17], &345u64.to_le_bytes());
        let back = decode(&text).unwrap();
        assert_eq!(&back[..3], &sources);
        assert_eq!(back[3], CursorPos { generation: 0xdead_beef, offset: 4096 });
        assert_eq!(decode("!!"), None);
        assert_eq!(decode("BA=="), None);
    }
}
