#!/usr/bin/env bash
# Builds the Debian package target/debian/msbfs_<version>_<arch>.deb: the release
# binary, the systemd unit, the man page and shell completions (generated from the
# command-line definitions), the lnav format and the README. Installs cargo-deb first
# when it is missing (about two minutes of compiling).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo-deb >/dev/null 2>&1 || cargo install cargo-deb --locked --version 3.8.0
cargo build --release --bin msbfs
mkdir -p target/assets
bin=target/release/msbfs
"$bin" man | gzip -9n >target/assets/msbfs.1.gz
"$bin" completions bash >target/assets/msbfs.bash
"$bin" completions zsh >target/assets/_msbfs
"$bin" completions fish >target/assets/msbfs.fish
cargo deb --no-build --no-strip
