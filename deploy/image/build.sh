#!/usr/bin/env bash
# Builds the gateway's container image and checks it.
#
#   deploy/image/build.sh [TAG]          (default: switchyard:dev)
#   BINARY=path/to/static/switchyard deploy/image/build.sh [TAG]
#
# With podman, buildah or a running Docker engine, it builds the repository's
# Dockerfile and runs the image. Where that cannot be done (no tool, no base
# image can be pulled, or containers are forbidden), it builds the same
# image without them: the static musl binary (BINARY, else built here),
# laid out by rootfs.sh as the Dockerfile's last stage does, packed by
# oci_layout.py as an OCI image (target/image/switchyard.oci.tar), and loaded
# into podman's store when podman is there.
#
# Then it checks what can be checked here: the image's entrypoint, run in a
# container, or else from the image's root filesystem chroot'ed as its user
# 10001, answers `switchyard healthcheck` (and `--ready`) and a Converse call
# against the built-in simulator.
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${1:-switchyard:dev}
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
body='{"messages":[{"role":"user","content":[{"text":"hello from the image"}]}]}'

# Waits until `$3... healthcheck --gateway $1` passes (the probe as the
# image runs it), then asks /readyz the same way, and a Converse call from
# here on port $2.
check() {
  local probe=$1 port=$2; shift 2
  for _ in $(seq 100); do
    "$@" healthcheck --gateway "$probe" >/dev/null 2>&1 && break
    sleep 0.2
  done
  "$@" healthcheck --gateway "$probe"
  "$@" healthcheck --gateway "$probe" --ready
  curl -fsS -H 'content-type: application/json' -d "$body" "http://127.0.0.1:$port/model/claude/converse" |
    grep -q '"stopReason"' || die "the image's gateway did not answer a Converse call"
  say "the image answers /healthz, /readyz and a Converse call (simulator)"
}

tool=
if command -v podman >/dev/null 2>&1; then tool=podman
elif command -v buildah >/dev/null 2>&1; then tool=buildah
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then tool=docker
fi

if [ -n "$tool" ] && [ -z "${BINARY:-}" ]; then
  say "building $tag from the Dockerfile with $tool"
  built=0
  if [ "$tool" = buildah ]; then buildah bud -t "$tag" . && built=1; else "$tool" build -t "$tag" . && built=1; fi
  runner=$tool; [ "$tool" = buildah ] && runner=podman
  if [ "$built" = 1 ] && command -v "$runner" >/dev/null 2>&1; then
    port=$(free_port)
    if id=$("$runner" run -d --rm -p "127.0.0.1:$port:4000" "$tag" serve --config /etc/switchyard/switchyard.toml --simulate); then
      trap '"$runner" kill "$id" >/dev/null 2>&1 || true' EXIT
      check http://127.0.0.1:4000 "$port" "$runner" exec "$id" /switchyard
      exit 0
    fi
    say "$runner cannot run containers here"
  fi
  say "the Dockerfile could not be built and run with $tool here"
fi

say "building the same image from a static musl binary, without a container tool"
binary=${BINARY:-}
if [ -z "$binary" ]; then
  rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl ||
    rustup target add x86_64-unknown-linux-musl ||
    die "no musl target: rustup target add x86_64-unknown-linux-musl"
  if ! command -v musl-gcc >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      apt-get install -y -qq musl-tools >/dev/null
    else
      die "musl-gcc is missing: sudo apt-get install musl-tools"
    fi
  fi
  CC_x86_64_unknown_linux_musl=musl-gcc \
    cargo build --release --locked -p switchyard --target x86_64-unknown-linux-musl
  binary=target/x86_64-unknown-linux-musl/release/switchyard
fi
mkdir -p target/image
deploy/image/rootfs.sh "$binary" target/image/rootfs
python3 deploy/image/oci_layout.py target/image/rootfs target/image/switchyard.oci.tar "$tag"
if command -v podman >/dev/null 2>&1; then
  podman load -i target/image/switchyard.oci.tar
fi

# No container may run here: run the entrypoint from the image's own root
# filesystem instead, as its user, with its environment.
[ "$(id -u)" = 0 ] || die "checking the image's root filesystem needs chroot: run as root (or install podman)"
port=$(free_port)
rootfs=$(pwd)/target/image/rootfs
chroot_bin=$(command -v chroot) || die "chroot is missing (coreutils)"
in_image() {
  env -i XDG_DATA_HOME=/var/lib XDG_CACHE_HOME=/var/cache HOME=/var/lib/switchyard \
    "$chroot_bin" --userspec=10001:10001 "$rootfs" /switchyard "$@"
}
in_image serve --config /etc/switchyard/switchyard.toml --simulate --listen "127.0.0.1:$port" >target/image/serve.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait 2>/dev/null || true' EXIT
check "http://127.0.0.1:$port" "$port" in_image
