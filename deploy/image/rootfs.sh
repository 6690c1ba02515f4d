#!/usr/bin/env bash
# Lays out the image's root filesystem in OUT from a static (musl)
# `switchyard` binary: the binary as /switchyard, the default config, a
# passwd naming the unprivileged user 10001, the CA certificates for
# Bedrock's TLS, and the folders the gateway writes (key store, jobs,
# compiled-policy cache) owned by that user. The Dockerfile and build.sh
# both use it, so the image is the same however it is built.
#
#   deploy/image/rootfs.sh BINARY OUT
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 STATIC_SWITCHYARD_BINARY OUT_DIR" >&2; exit 2; }
binary=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
if file "$binary" 2>/dev/null | grep -q "dynamically linked"; then
  echo "$binary is dynamically linked; the image has no libc: build it for x86_64-unknown-linux-musl" >&2
  exit 1
fi
certs=/etc/ssl/certs/ca-certificates.crt
[ -f "$certs" ] || { echo "no CA bundle at $certs: apt-get install ca-certificates" >&2; exit 1; }
rm -rf "$out"
mkdir -p "$out/etc/switchyard" "$out/etc/ssl/certs" "$out/var/lib/switchyard" "$out/var/cache/switchyard" "$out/tmp"
# Stripped: the release profile keeps debug info for profiling, 200+ MiB of it.
install -m 0755 -s "$binary" "$out/switchyard"
install -m 0644 "$here/switchyard.toml" "$out/etc/switchyard/switchyard.toml"
install -m 0644 "$certs" "$out/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/:/sbin/nologin\nswitchyard:x:10001:10001:switchyard:/var/lib/switchyard:/sbin/nologin\n' >"$out/etc/passwd"
printf 'root:x:0:\nswitchyard:x:10001:\n' >"$out/etc/group"
chmod 1777 "$out/tmp"
# The gateway's own data: only its user reads it (the job store holds prompts).
chmod 0700 "$out/var/lib/switchyard" "$out/var/cache/switchyard"
if [ "$(id -u)" = 0 ]; then
  chown -R 10001:10001 "$out/var/lib/switchyard" "$out/var/cache/switchyard"
fi
