#!/usr/bin/env python3
"""Check a TES ledger checkpoint (and optionally an inclusion proof) with
nothing but the audit key's vkey: an implementation that is not TES's.

    python3 verify.py VKEY CHECKPOINT_FILE [PROOF_JSON_FILE]

VKEY is `tes audit key` output (C2SP signed-note verifier key),
CHECKPOINT_FILE a note from `tes audit checkpoint` (or a witness), and
PROOF_JSON_FILE the output of `tes audit prove SEQ --checkpoint CHECKPOINT_FILE --json`.
Needs hashlib (standard library) and an Ed25519 implementation (the
`cryptography` package). Exit 0 when everything verifies, 1 otherwise.
"""
import base64
import hashlib
import json
import sys

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def fail(why):
    print(f"FAILED: {why}")
    sys.exit(1)


def parse_vkey(vkey):
    # <name>+<8 hex key hash>+base64(0x01 || 32-byte Ed25519 public key)
    name, keyhash, b64 = vkey.strip().split("+", 2)
    key = base64.b64decode(b64)
    if key[0] != 0x01 or len(key) != 33:
        fail("not an Ed25519 vkey")
    expected = hashlib.sha256(name.encode() + b"\n" + key).digest()[:4]
    if expected.hex() != keyhash:
        fail("the vkey's key hash does not match its key")
    return name, expected, Ed25519PublicKey.from_public_bytes(key[1:])


def verify_note(note, name, keyhash, public):
    # C2SP signed-note: text, a blank line, then "— <name> base64(keyhash || sig)" lines.
    text, _, sigs = note.rpartition("\n\n")
    text += "\n"
    for line in sigs.splitlines():
        if not line.startswith("\u2014 "):
            fail("malformed signature line")
        signer, b64 = line[2:].split(" ", 1)
        raw = base64.b64decode(b64)
        if signer == name and raw[:4] == keyhash:
            public.verify(raw[4:], text.encode())  # raises InvalidSignature
            return text
    fail(f"no signature by {name}")


def parse_checkpoint(text, name):
    # C2SP tlog-checkpoint: origin, tree size, base64 root hash, then extensions.
    lines = text.split("\n")
    if lines[0] != name:
        fail(f"origin {lines[0]!r} is not the key's name {name!r}")
    return int(lines[1]), base64.b64decode(lines[2])


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def inclusion_root(leaf_index, tree_size, leaf_hash, proof):
    # RFC 9162 section 2.1.3.2.
    if leaf_index >= tree_size:
        fail("leaf index outside the tree")
    fn, sn, r = leaf_index, tree_size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            fail("proof too long")
        if fn & 1 or fn == sn:
            r = node(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        fail("proof too short")
    return r


def main():
    if len(sys.argv) not in (3, 4):
        print(__doc__)
        sys.exit(2)
    name, keyhash, public = parse_vkey(sys.argv[1])
    note = open(sys.argv[2], encoding="utf-8").read()
    try:
        text = verify_note(note, name, keyhash, public)
    except Exception as e:  # cryptography's InvalidSignature
        fail(f"signature does not verify ({type(e).__name__})")
    size, root = parse_checkpoint(text, name)
    print(f"checkpoint OK: {name}, tree size {size}, root {root.hex()}")
    if len(sys.argv) == 4:
        proof = json.load(open(sys.argv[3], encoding="utf-8"))
        if proof["treeSize"] != size:
            fail("the proof is for another tree size")
        # Leaf i = SHA-256(0x00 || the row's 32-byte hash); leaf i is seq i+1.
        leaf = hashlib.sha256(b"\x00" + bytes.fromhex(proof["rowHash"])).digest()
        got = inclusion_root(proof["leafIndex"], size,
                             leaf, [bytes.fromhex(h) for h in proof["proof"]])
        if got != root:
            fail(f"seq {proof['seq']} is not in the signed tree")
        print(f"inclusion OK: seq {proof['seq']} (row hash {proof['rowHash']}) is in it")


if __name__ == "__main__":
    main()
