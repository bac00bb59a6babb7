//! The `user.cursor` xattr (DESIGN §2.5): standard base64 of `[count: u8]` followed by
//! `count` × `[generation: u64 LE][offset: u64 LE]`, positions in the order exec.log,
//! runtime.log, kernel.log, then `[epoch id][merged.log offset]`.

use base64::Engine as _;

use super::CursorPos;

/// Name of the xattr on `merged.log`.
pub const CURSOR_XATTR: &str = "user.cursor";

/// Encodes the three source positions and the merged position of `epoch` at `size`.
pub fn encode(sources: &[CursorPos; 3], epoch: u64, size: u64) -> String {
    let merged = CursorPos { generation: epoch, offset: size };
    encode_positions(&[sources[0], sources[1], sources[2], merged])
}

/// Encodes any list of positions (at most 255), e.g. the three of an SDK cursor.
pub fn encode_positions(positions: &[CursorPos]) -> String {
    let mut raw = Vec::with_capacity(1 + positions.len() * 16);
    raw.push(positions.len().min(255) as u8);
    for p in positions.iter().take(255) {
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

/// What each position of a cursor names, in order.
const POSITION_NAMES: [&str; 4] = ["exec.log", "runtime.log", "kernel.log", "merged.log"];

/// A cursor's positions for people: one line per source (`generation` is the source
/// file's identity, `byte` the offset in it) and the `merged.log` offset of that
/// moment.
pub fn describe(positions: &[CursorPos]) -> String {
    let mut out = String::new();
    for (i, p) in positions.iter().enumerate() {
        let line = match POSITION_NAMES.get(i) {
            Some(&"merged.log") => format!("merged.log   offset {:>12}   (epoch {:#x})\n", p.offset, p.generation),
            Some(name) => format!("{name:<12} byte {:>14}   (generation {:#x})\n", p.offset, p.generation),
            None => format!("position {i}   offset {}   (generation {:#x})\n", p.offset, p.generation),
        };
        out.push_str(&line);
    }
    out
}

/// A cursor's positions as one JSON object: `{"cursor", "exec", "runtime", "kernel"}`
/// (each `{"generation", "offset"}`), then `"epoch"` and `"merged_offset"` when the
/// cursor is msbfs's, and `"more"` for positions beyond those.
pub fn to_json(text: &str, positions: &[CursorPos]) -> String {
    let pos = |p: &CursorPos| serde_json::json!({"generation": p.generation, "offset": p.offset});
    let mut object = serde_json::Map::new();
    object.insert("cursor".into(), text.into());
    for (name, p) in ["exec", "runtime", "kernel"].iter().zip(positions) {
        object.insert((*name).into(), pos(p));
    }
    if let Some(merged) = positions.get(3) {
        object.insert("epoch".into(), merged.generation.into());
        object.insert("merged_offset".into(), merged.offset.into());
    }
    if positions.len() > 4 {
        object.insert("more".into(), positions[4..].iter().map(pos).collect());
    }
    serde_json::Value::Object(object).to_string()
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
        let text = describe(&back);
        assert_eq!(text.lines().count(), 4);
        assert!(text.starts_with("exec.log     byte            345   (generation 0xc)\n"), "{text}");
        assert!(text.ends_with("merged.log   offset         4096   (epoch 0xdeadbeef)\n"), "{text}");
        assert_eq!(decode("BA=="), None);
        let json: serde_json::Value = serde_json::from_str(&to_json(&text, &back)).unwrap();
        assert_eq!(json["exec"]["offset"], 345);
        assert_eq!(json["kernel"]["generation"], 0);
        assert_eq!(json["epoch"], 0xdead_beef_u64);
        assert_eq!(json["merged_offset"], 4096);
    }
}
