#!/usr/bin/env bash
# Makes the secrets the stack needs, once, into DIR (default ops/secrets):
# the signing keys of v1 and v2, the gateway's admin token, one NATS
# password per user of ops/nats-server.conf, and the S3 secret of the
# optional MinIO profile. An existing file is never overwritten.
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
for user in supervisor version monitoring telemetry alert gateway operator client monitor; do
    make "nats_pw_$user"
done
echo "$dir"
