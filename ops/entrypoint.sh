#!/bin/sh
# `tes` in the image (the binary itself is /usr/local/libexec/tes): the
# entrypoint, the healthcheck and every `docker compose exec … tes …` run
# this. Compose secrets are bind mounts of the host's files, which
# ops/secrets.sh makes 0600: only their owner and root may read them. As
# root, this hands copies to the tes user once per container (a folder of
# its own, 0500, files 0400; made aside and renamed into place, so a
# concurrent start never sees half of it), points every *_FILE variable
# that named a secret at its copy, and runs tes as tes (uid 10001): tes
# never runs as root and never leaves a root-owned file in a volume. As any
# other user it runs tes as that user.
set -eu
bin=/usr/local/libexec/tes
if [ "$(id -u)" != 0 ]; then
    exec "$bin" "$@"
fi
own=/run/tes-secrets
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
        export "$var=$own/${path#/run/secrets/}"
    done
fi
exec setpriv --reuid=tes --regid=tes --init-groups -- "$bin" "$@"
