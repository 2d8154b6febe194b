#!/usr/bin/env bash
# Makes the secrets the stack needs, once, into DIR (default ops/secrets):
# the signing keys of v1 and v2, the gateway's admin token, one NATS
# password per user of ops/nats-server.conf, and the S3 secret of the
# optional MinIO profile. An existing file is never overwritten.
#
# The directory is 0700 (only you); the files are 0644 because compose
# bind-mounts them into containers that run as another user (tes, uid 10001),
# which must be able to read them.
set -euo pipefail
dir=${1:-"$(dirname "$0")/secrets"}
mkdir -p "$dir"
chmod 700 "$dir"
make() {
    [ -s "$dir/$1" ] && return
    openssl rand -hex 32 > "$dir/$1"
    chmod 644 "$dir/$1"
}
make version_signing_key
make version_signing_key_v2
make admin_token
make s3_secret
for user in supervisor version monitoring telemetry alert gateway operator client monitor; do
    make "nats_pw_$user"
done
echo "$dir"
