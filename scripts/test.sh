#!/usr/bin/env bash
# Runs every test of msbfs, including the integration tests that mount for real
# (they need root and /dev/fuse, and the tools below; a run where any of them was
# skipped fails).
#
# Release mode: the stress tests push ~30 MB through a rotating producer per round;
# in debug they are several times slower. Set MSBFS_TEST_PROFILE=debug to override.
set -euo pipefail
cd "$(dirname "$0")/.."

# The tools the tests drive, as "command:Debian package".
tools=(
    busybox:busybox tmux:tmux less:less getfattr:attr setfattr:attr md5sum:coreutils
    python3:python3 rg:ripgrep fusermount3:fuse3 bwrap:bubblewrap lnav:lnav
    multitail:multitail syslog-ng:syslog-ng-core useradd:passwd setpriv:util-linux
    systemd-analyze:systemd strace:strace jq:jq
)
pkgs=()
for entry in "${tools[@]}"; do
    command -v "${entry%%:*}" >/dev/null 2>&1 || pkgs+=("${entry#*:}")
done
if ((${#pkgs[@]})); then
    echo "test.sh: installing missing tools: ${pkgs[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${pkgs[@]}"
fi
bash scripts/install-rsyslog.sh  # rsyslogd unpacked into target/tools (its package conflicts with syslog-ng-core)
# An ordinary user for the tests of unprivileged mounts and foreign readers.
id -u msbfs-test >/dev/null 2>&1 || useradd --system --user-group --no-create-home --shell /usr/sbin/nologin msbfs-test
if [[ ! -c /dev/fuse ]]; then
    echo "test.sh: /dev/fuse is missing; the mount tests cannot run" >&2
    exit 1
fi
# Ordinary users mount through fusermount3, which opens /dev/fuse as the user: 0666,
# as udev sets it on a stock Debian or Ubuntu (containers often leave it 0600).
chmod 0666 /dev/fuse

profile=(--release)
[[ "${MSBFS_TEST_PROFILE:-release}" == debug ]] && profile=()

log=$(mktemp)
trap 'rm -f "$log"' EXIT
start=$SECONDS
status=0
cargo test "${profile[@]}" --all-targets --no-fail-fast 2>&1 | tee "$log" || status=$?
# The Debian package builds, installs and works (cargo-deb is built once, ~2 min).
package=ok
bash scripts/check-package.sh 2>&1 | tee -a "$log" || { package=FAILED; status=1; }

echo
echo "== summary ($((SECONDS - start)) s) =="
grep -E '^\s+Running |^test result:' "$log" | sed -E 's/^\s+Running /  /' || true
echo "  Debian package: $package"
# A mount test without root or /dev/fuse passes after a marker line (tests/common):
# here that is a failure, since this script is the whole test suite.
skipped=$(grep -a -o 'msbfs-test SKIPPED: .*' "$log" || true)
if [[ -n "$skipped" ]]; then
    echo "test.sh: $(wc -l <<<"$skipped") mount tests were skipped:" >&2
    echo "$skipped" >&2
    status=1
fi
leftover=$(grep -E ' - fuse(\.msbfs)? msbfs ' /proc/self/mountinfo | grep msbfs-it- || true)
if [[ -n "$leftover" ]]; then
    echo "test.sh: leftover msbfs test mounts:" >&2
    echo "$leftover" >&2
    status=1
fi
if ((status)); then
    echo "FAILED"
else
    echo "ALL TESTS PASSED"
fi
exit "$status"
