#!/usr/bin/env bash
# Builds the Debian package (scripts/package.sh), installs it, checks what it put on
# the system, runs the installed msbfs, and removes the package again. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/package.sh
deb=$(ls -t target/debian/msbfs_*.deb | head -1)
echo "check-package: installing $deb"
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "./$deb" >/dev/null
trap 'dpkg --purge msbfs >/dev/null' EXIT

files=$(dpkg -L msbfs)
for want in /usr/bin/msbfs /lib/systemd/system/msbfs@.service /usr/share/man/man1/msbfs.1.gz \
    /usr/share/bash-completion/completions/msbfs /usr/share/zsh/vendor-completions/_msbfs \
    /usr/share/fish/vendor_completions.d/msbfs.fish /usr/share/msbfs/lnav/msbfs.json; do
    grep -qx "$want" <<<"$files" || { echo "check-package: $want is not in the package" >&2; exit 1; }
    [[ -s "$want" ]] || { echo "check-package: $want is empty" >&2; exit 1; }
done
[[ "$(/usr/bin/msbfs --version)" == "msbfs $(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)" ]]
zcat /usr/share/man/man1/msbfs.1.gz | grep -q '^\.TH msbfs 1'
grep -q '_msbfs' /usr/share/bash-completion/completions/msbfs
dpkg -s msbfs | grep -q '^Depends:.*fuse3'
echo "check-package: $deb installs the binary, unit, man page, completions and lnav format"
