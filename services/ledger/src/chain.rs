//! The hash chain. Each row's hash is SHA-256 over a domain tag, the previous
//! row's hash and every column of the row in a fixed binary layout, so a
//! change to any byte of any column, a reordering or a removal in the middle
//! breaks the chain from that row on.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// The `prev_hash` of seq 1.
pub const GENESIS: Hash = [0u8; 32];

/// Separates ledger hashes from any other SHA-256 use. Part of the format.
const DOMAIN_TAG: &[u8] = b"tes.ledger.row.v1\0";

/// The hashed columns of a row (everything but `prev_hash` and `hash`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowFields<'a> {
    pub seq: u64,
    pub id: &'a [u8; 16],
    pub ts: u64,
    pub thread: u16,
    pub kind: &'a str,
    pub key_version: Option<u32>,
    pub causation_id: Option<&'a [u8; 16]>,
    pub correlation_id: Option<&'a [u8; 16]>,
    pub schema: u16,
    pub payload: &'a [u8],
}

pub fn row_hash(prev: &Hash, row: &RowFields<'_>) -> Hash {
    let mut h = Sha256::new();
    h.update(DOMAIN_TAG);
    h.update(prev);
    h.update(row.seq.to_be_bytes());
    h.update(row.id);
    h.update(row.ts.to_be_bytes());
    h.update(row.thread.to_be_bytes());
    h.update((row.kind.len() as u32).to_be_bytes());
    h.update(row.kind.as_bytes());
    optional(
        &mut h,
        row.key_version
            .map(u32::to_be_bytes)
            .as_ref()
            .map(|b| &b[..]),
    );
    optional(&mut h, row.causation_id.map(|b| &b[..]));
    optional(&mut h, row.correlation_id.map(|b| &b[..]));
    h.update(row.schema.to_be_bytes());
    h.update((row.payload.len() as u64).to_be_bytes());
    h.update(row.payload);
    h.finalize().into()
}

fn optional(h: &mut Sha256, value: Option<&[u8]>) {
    match value {
        None => h.update([0u8]),
        Some(bytes) => {
            h.update([1u8]);
            h.update(bytes);
        }
    }
}

/// Lowercase hex of a hash. Table lookups into a stack buffer: `hex::encode`
/// goes character by character and showed up in the signing profile.
pub fn to_hex(hash: &Hash) -> String {
    let mut out = [0u8; 64];
    hex_in(hash, &mut out).to_string()
}

/// [`to_hex`] into a buffer the caller holds: what the append binds, with
/// no allocation per row.
pub fn hex_in<'a>(hash: &Hash, out: &'a mut [u8; 64]) -> &'a str {
    hex::encode_to_slice(hash, out).expect("64 bytes hold 32 in hex");
    std::str::from_utf8(out).expect("hex is ASCII")
}

/// 64 hex digits (either case) → a hash. A table lookup per digit: the
/// `hex` crate's general decoder showed up in the verification profile.
pub fn from_hex(s: &str) -> Option<Hash> {
    const fn nibbles() -> [u8; 256] {
        let mut t = [0xffu8; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            t[b'A' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    }
    const NIBBLE: [u8; 256] = nibbles();
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (hi, lo) = (NIBBLE[pair[0] as usize], NIBBLE[pair[1] as usize]);
        bad |= (hi | lo) & 0xf0;
        *o = (hi << 4) | (lo & 0x0f);
    }
    (bad == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fields<'a>(id: &'a [u8; 16], payload: &'a [u8]) -> RowFields<'a> {
        RowFields {
            seq: 7,
            id,
            ts: 1_700_000_000_000,
            thread: 0x6001,
            kind: "key_rotate",
            key_version: Some(2),
            causation_id: None,
            correlation_id: None,
            schema: 1,
            payload,
        }
    }

    proptest! {
        /// The fast hex decoder agrees with the `hex` crate on every input.
        #[test]
        fn from_hex_agrees_with_the_hex_crate(text in "[0-9a-fA-FxG ]{62,66}", h in any::<[u8; 32]>()) {
            prop_assert_eq!(from_hex(&to_hex(&h)), Some(h));
            prop_assert_eq!(from_hex(&to_hex(&h).to_uppercase()), Some(h));
            let mut want = [0u8; 32];
            let theirs = hex::decode_to_slice(&text, &mut want).ok().map(|_| want);
            prop_assert_eq!(from_hex(&text), theirs);
        }

        /// Any single-field change gives another hash.
        #[test]
        fn every_field_is_covered(payload in proptest::collection::vec(any::<u8>(), 1..64), i in any::<prop::sample::Index>(), bit in 0u8..8) {
            let id = [3u8; 16];
            let base = fields(&id, &payload);
            let h = row_hash(&GENESIS, &base);
            let mut flipped = payload.clone();
            let at = i.index(flipped.len());
            flipped[at] ^= 1 << bit;
            prop_assert_ne!(h, row_hash(&GENESIS, &fields(&id, &flipped)));
            prop_assert_ne!(h, row_hash(&GENESIS, &RowFields { seq: 8, ..base.clone() }));
            prop_assert_ne!(h, row_hash(&GENESIS, &RowFields { key_version: None, ..base.clone() }));
            prop_assert_ne!(h, row_hash(&GENESIS, &RowFields { key_version: Some(0), ..base.clone() }));
            prop_assert_ne!(h, row_hash(&GENESIS, &RowFields { causation_id: Some(&id), ..base.clone() }));
            prop_assert_ne!(h, row_hash(&GENESIS, &RowFields { kind: "key_rotatf", ..base.clone() }));
            prop_assert_ne!(h, row_hash(&[1u8; 32], &base));
        }
    }
}
