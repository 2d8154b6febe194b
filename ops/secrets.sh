#!/usr/bin/env bash
# Makes the secrets the stack needs, once, into DIR (default ops/secrets):
# the signing keys of v1 and v2, the gateway's admin token, one NATS
# password per user of ops/nats-server.conf, the S3 secret of the
# optional MinIO profile, and the audit key that signs the ledger's
# checkpoints (one for every writer: after a failover the new writer's
# checkpoints verify under the same vkey). An existing file is never
# overwritten.
#
# The directory is 0700 and the files 0600: only you. Compose bind-mounts
# them into the containers as they are; the image's entrypoint
# (ops/entrypoint.sh) reads them as root and hands copies to the tes user.
set -euo pipefail
dir=${1:-"$(dirname "$0")/secrets"}
mkdir -p "$dir"
chmod 700 "$dir"
make() {
    [ -s "$dir/$1" ] && return
    (umask 077 && openssl rand -hex 32 > "$dir/$1")
    chmod 600 "$dir/$1"
}
make version_signing_key
make version_signing_key_v2
make admin_token
make s3_secret
# The audit key in the signed-note form tes reads (docs/audit/README.md):
# PRIVATE+KEY+<name>+<keyhash>+base64(0x01 ‖ Ed25519 seed), keyhash the
# first four bytes of SHA-256(name ‖ "\n" ‖ 0x01 ‖ public key). openssl
# makes the key pair; the seed and the public key are the last 32 bytes of
# their DER forms. `tes audit key` prints the vkey auditors hold.
make_audit_key() {
    [ -s "$dir/audit_key" ] && return
    local work name hash
    work=$(mktemp -d)
    (
        umask 077
        openssl genpkey -algorithm ed25519 -outform DER -out "$work/key.der"
        openssl pkey -inform DER -in "$work/key.der" -pubout -outform DER | tail -c 32 > "$work/pub"
        name="tes-ledger/compose-$(openssl rand -hex 4)"
        hash=$({ printf '%s\n\001' "$name"; cat "$work/pub"; } \
            | openssl dgst -sha256 -binary | head -c 4 | od -An -tx1 | tr -d ' \n')
        printf 'PRIVATE+KEY+%s+%s+%s\n' "$name" "$hash" \
            "$({ printf '\001'; tail -c 32 "$work/key.der"; } | base64 -w0)" > "$dir/audit_key"
    )
    rm -rf "$work"
    chmod 600 "$dir/audit_key"
}
make_audit_key
for user in supervisor version monitoring telemetry alert gateway operator client monitor; do
    make "nats_pw_$user"
done
echo "$dir"
