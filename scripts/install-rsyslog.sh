#!/usr/bin/env bash
# Puts rsyslogd and its modules under target/tools/rsyslog for tests/mount_shippers.rs.
#
# Debian's rsyslog package conflicts with syslog-ng-core (both provide
# system-log-daemon), and the tests need both; so rsyslog is not installed but only
# unpacked here: its library dependencies are installed with apt, the package itself
# is downloaded and extracted with dpkg-deb. Nothing of it is started or enabled.
set -euo pipefail
cd "$(dirname "$0")/.."

dest=target/tools/rsyslog
[[ -x "$dest/usr/sbin/rsyslogd" ]] && exit 0

deps=(libestr0 libfastjson4 liblognorm5 libsystemd0 libuuid1 libzstd1 zlib1g)
missing=()
for p in "${deps[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
updated=0
if ((${#missing[@]})); then
    echo "install-rsyslog.sh: installing rsyslog's libraries: ${missing[*]}"
    apt-get update
    updated=1
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chown _apt "$work" 2>/dev/null || true  # apt downloads as _apt where it can
if ! (cd "$work" && apt-get download rsyslog); then
    ((updated)) && exit 1
    apt-get update
    (cd "$work" && apt-get download rsyslog)
fi
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp"
dpkg-deb -x "$work"/rsyslog_*.deb "$dest.tmp"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "install-rsyslog.sh: $("$dest/usr/sbin/rsyslogd" -v | head -1) in $dest"
