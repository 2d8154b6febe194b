#!/bin/sh
# `tes` in the image (the binary itself is /usr/local/libexec/tes): the
# entrypoint, the healthcheck and every `docker compose exec … tes …` run
# this. Compose secrets are bind mounts of the host's files, which
# ops/secrets.sh makes 0600: only their owner and root may read them. As
# root, this hands copies to the tes user (a folder of its own, 0500, files
# 0400; made aside and renamed into place, so a concurrent `exec` never sees
# half of it) — afresh each time the daemon starts, so a secret changed on
# the host takes effect at the next restart — points every *_FILE variable
# whose secret was copied at its copy (one that names a missing file keeps
# its own path, so the error names what was configured), and runs tes as
# tes (uid 10001): tes never runs as root and never leaves a root-owned
# file in a volume. As any other user it runs tes as that user.
set -eu
bin=/usr/local/libexec/tes
if [ "$(id -u)" != 0 ]; then
    exec "$bin" "$@"
fi
own=/run/tes-secrets
if [ "${1:-}" = daemon ]; then
    rm -rf "$own"
fi
if [ -d /run/secrets ] && [ ! -d "$own" ]; then
    tmp=$(mktemp -d /run/tes-secrets.XXXXXX)
    for f in /run/secrets/*; do
        if [ -f "$f" ]; then cp "$f" "$tmp/"; fi
    done
    chown -R tes:tes "$tmp"
    find "$tmp" -type f -exec chmod 0400 {} +
    chmod 0500 "$tmp"
    mv -T "$tmp" "$own" 2>/dev/null || rm -rf "$tmp"
fi
if [ -d "$own" ]; then
    for var in $(env | sed -n 's/^\([A-Za-z0-9_]*_FILE\)=\/run\/secrets\/.*/\1/p'); do
        eval "path=\${$var}"
        copy=$own/${path#/run/secrets/}
        if [ -f "$copy" ]; then export "$var=$copy"; fi
    done
fi
exec setpriv --reuid=tes --regid=tes --init-groups -- "$bin" "$@"
