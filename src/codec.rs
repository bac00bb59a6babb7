//! Small binary encoding helpers shared by the op log and the store's files: LEB128
//! varints, zigzag signed varints, fixed little-endian integers, and a bounds-checked
//! [`Decoder`] that never panics on hostile or torn input.

/// Appends `v` as an LEB128 varint (1 to 10 bytes).
pub fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `v` zigzag-encoded as a varint (small magnitudes stay short).
pub fn push_zigzag(out: &mut Vec<u8>, v: i64) {
    push_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

/// Appends a length-prefixed byte string.
pub fn push_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    push_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Reads values from a byte slice; every read returns `None` past the end or on a
/// malformed value, so a torn or corrupt record is rejected, never a panic.
#[derive(Debug, Clone)]
pub struct Decoder<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Decoder<'a> {
    /// A decoder at the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Decoder<'a> {
        Decoder { bytes, at: 0 }
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.at
    }

    /// True when every byte was consumed.
    pub fn is_empty(&self) -> bool {
        self.at >= self.bytes.len()
    }

    /// The bytes not yet consumed.
    pub fn rest(&self) -> &'a [u8] {
        &self.bytes[self.at.min(self.bytes.len())..]
    }

    /// One byte.
    pub fn u8(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    /// An LEB128 varint of at most 10 bytes.
    pub fn varint(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    /// A zigzag varint.
    pub fn zigzag(&mut self) -> Option<i64> {
        let z = self.varint()?;
        Some(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    /// A varint that must fit in a `u32`.
    pub fn varint_u32(&mut self) -> Option<u32> {
        u32::try_from(self.varint()?).ok()
    }

    /// `n` raw bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.at.checked_add(n)?;
        let out = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(out)
    }

    /// A length-prefixed byte string of at most `max` bytes.
    pub fn bytes(&mut self, max: usize) -> Option<&'a [u8]> {
        let n = usize::try_from(self.varint()?).ok().filter(|n| *n <= max)?;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_truncation_is_rejected() {
        let mut out = Vec::new();
        for v in [0, 1, 127, 128, 300, u64::MAX] {
            push_varint(&mut out, v);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            push_zigzag(&mut out, v);
        }
        push_bytes(&mut out, b"abc");
        let mut d = Decoder::new(&out);
        for v in [0, 1, 127, 128, 300, u64::MAX] {
            assert_eq!(d.varint(), Some(v));
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(d.zigzag(), Some(v));
        }
        assert_eq!(d.bytes(3), Some(&b"abc"[..]));
        assert!(d.is_empty());
        assert_eq!(d.u8(), None);
        assert_eq!(Decoder::new(&[0x80]).varint(), None);
        assert_eq!(Decoder::new(&[0xff; 11]).varint(), None);
        assert_eq!(Decoder::new(&[5, 1]).bytes(10), None);
        assert_eq!(Decoder::new(&[5, 1, 2, 3, 4, 5]).bytes(4), None);
    }
}
