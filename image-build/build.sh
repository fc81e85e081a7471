#!/usr/bin/env bash
# Builds the ferry live image: a static ferry (the image's /init), then the boot media.
#   image-build/build.sh [OUT_DIR [more `ferry image build` options...]]
#   e.g. image-build/build.sh out/image --cmdline 'ferry.server=https://192.0.2.10:8443 ferry.pin=...'
# OUT_DIR defaults to out/image. Paths are relative to the repository root. The first run
# needs root, to install the Debian packages it uses and to cache the kernel package in
# /var/cache/ferry (about 70 MB, fetched once).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-out/image}
[ $# -gt 0 ] && shift

# The glibc target with +crt-static (rustup cannot fetch musl here); the explicit --target
# keeps RUSTFLAGS away from proc-macro crates.
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu

# Release media get the strongest initramfs compression: about 35 s more, about 10% smaller.
export FERRY_ZSTD_LEVEL=${FERRY_ZSTD_LEVEL:-19}
target/x86_64-unknown-linux-gnu/release/ferry image build \
  --init target/x86_64-unknown-linux-gnu/release/ferry --out "$out" "$@"
