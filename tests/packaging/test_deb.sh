#!/bin/bash
# Build the .deb, install it into a clean Debian 12 chroot, check what it installed,
# reinstall it (upgrade path), remove it (config and data stay), purge it (nothing
# stays but the system user).  Runs as root; CI calls it from .ci/run.
#
# In a chroot systemd is not PID 1, so the postinst enables the units but starts
# nothing: the install checks show installation.  The last stage boots the same .deb
# under systemd-nspawn (test_units_live.sh) to run the units for real, with a probe in
# place of the torch-needing daemon.
#
# Environment (all optional):
#   ISHOWTTS_CACHE         cache root (default /var/cache/ishowtts-edge-ci): wheelhouse and
#                          the debootstrap tarball live here; cache it between CI runs.
#   ISHOWTTS_DEB           test this .deb instead of building one.
#   ISHOWTTS_SUITE         chroot suite (default bookworm); ISHOWTTS_MIRROR its mirror.
#   ISHOWTTS_KEEP=1        keep the work directory for inspection.
# Needs: debhelper lintian debootstrap python3-venv systemd (systemd-analyze) git, and
# systemd-container for the live stage (test_units_live.sh; skipped without it).
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
cache=${ISHOWTTS_CACHE:-/var/cache/ishowtts-edge-ci}
suite=${ISHOWTTS_SUITE:-bookworm}
mirror=${ISHOWTTS_MIRROR:-http://deb.debian.org/debian}
work=$(mktemp -d /tmp/ishowtts-deb-test.XXXXXX)
root="$work/root"
failures=0

step() { printf '\n=== %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; failures=$((failures + 1)); }
ok() { printf 'ok: %s\n' "$*"; }
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"; }

cleanup() {
    for m in dev/pts dev proc; do
        mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m"
    done
    if [ "${ISHOWTTS_KEEP:-0}" = 1 ]; then
        echo "work directory kept: $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { echo "test_deb.sh must run as root (chroot, dpkg)" >&2; exit 2; }
mkdir -p "$cache"

# ---------------------------------------------------------------- build
if [ -n "${ISHOWTTS_DEB:-}" ]; then
    deb=$(readlink -f "$ISHOWTTS_DEB")
    changes=""
else
    step "build (wheelhouse cache: $cache/wheelhouse)"
    mkdir -p "$work/src/ishowtts-edge"
    # Exactly what git would ship: tracked and untracked-but-not-ignored files.
    (cd "$repo" && git -c safe.directory="$repo" ls-files -z -co --exclude-standard | xargs -0 tar -cf - --no-recursion) \
        | tar -xf - -C "$work/src/ishowtts-edge"
    (cd "$work/src/ishowtts-edge" &&
        ISHOWTTS_WHEELHOUSE="$cache/wheelhouse" dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) || {
        tail -50 "$work/build.log"; echo "FAIL: dpkg-buildpackage" >&2; exit 1; }
    grep -E '^(check_bundle|build-venv|fetch-wheels):' "$work/build.log" || true
    deb=$(ls "$work"/src/ishowtts-edge_*.deb)
    changes=$(ls "$work"/src/ishowtts-edge_*.changes)
    ok "built $(basename "$deb") ($(du -h "$deb" | cut -f1))"

    step "lintian (errors fail; warnings are listed and justified in docs/packaging.md)"
    if lintian --fail-on error --tag-display-limit 0 "$changes" >"$work/lintian.txt" 2>&1; then
        ok "lintian: no errors"
    else
        fail "lintian reported errors"
    fi
    grep -E '^[EW]:' "$work/lintian.txt" || true
fi

# ---------------------------------------------------------------- clean root
step "clean $suite root"
tarball="$cache/$suite-minbase.tgz"
mkdir -p "$root"
if [ -f "$tarball" ]; then
    tar -xzf "$tarball" -C "$root"
else
    debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
        tail -20 "$work/debootstrap.log"; echo "FAIL: debootstrap" >&2; exit 1; }
    tar -czf "$tarball.tmp" -C "$root" . && mv "$tarball.tmp" "$tarball"
fi
mount -t proc proc "$root/proc"
mount --bind /dev "$root/dev"
cp /etc/resolv.conf "$root/etc/resolv.conf"

# Dependencies first, so that the before/after comparison sees only our package.
depends=$(dpkg-deb -f "$deb" Depends | sed 's/([^)]*)//g; s/|[^,]*//g; s/,/ /g')
in_root apt-get update -qq >/dev/null
in_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $depends >"$work/deps.log" 2>&1 || {
    tail -20 "$work/deps.log"; echo "FAIL: installing dependencies: $depends" >&2; exit 1; }
in_root apt-get clean

snapshot() {
    # Every path in the root, minus the package manager's and the test's own books.
    (cd "$root" && find . -xdev \
        \( -path ./proc -o -path ./dev -o -path ./tmp -o -path ./var/lib/dpkg -o -path ./var/lib/apt \
           -o -path ./var/cache/apt -o -path ./var/cache/debconf -o -path ./var/log -o -path ./run \) -prune \
        -o -print | sort)
}
snapshot >"$work/before.txt"
if in_root python3.11 -c 'import torch' 2>/dev/null; then
    fail "the clean root has torch; the torch-free checks below would prove nothing"
fi

# ---------------------------------------------------------------- install
step "install"
cp "$deb" "$root/tmp/"
if in_root env DEBIAN_FRONTEND=noninteractive dpkg -i "/tmp/$(basename "$deb")" >"$work/install.log" 2>&1; then
    ok "dpkg -i"
else
    cat "$work/install.log"; fail "dpkg -i"; exit 1
fi
sed 's/^/  | /' "$work/install.log" | grep -v -E 'Selecting|Preparing|Unpacking|Setting up|database' || true
grep -q "torch is not installed system-wide" "$work/install.log" && ok "postinst warned that torch is missing" \
    || fail "postinst did not warn about the missing torch"

step "files and permissions"
for path in /usr/bin/ishowtts-edge /usr/bin/ishowtts-edge-hwctl /usr/bin/ishowtts-edge-wyoming \
            /lib/systemd/system/ishowtts-edge.service \
            /lib/systemd/system/ishowtts-edge-wyoming.service \
            /lib/systemd/system/ishowtts-edge-hwctl.socket \
            /lib/systemd/system/ishowtts-edge-hwctl@.service \
            /usr/lib/sysusers.d/ishowtts-edge.conf /usr/lib/tmpfiles.d/ishowtts-edge.conf \
            /usr/share/doc/ishowtts-edge/operations.md /usr/share/doc/ishowtts-edge/packaging.md \
            /usr/lib/ishowtts-edge/venv/pyvenv.cfg; do
    [ -e "$root$path" ] && ok "$path" || fail "missing $path"
done
# Every etc/*.toml of the source tree (the daemon's, hwctl's hwctl.toml) is a
# root-owned conffile; hwctl refuses a config anyone else can write.
for toml in "$repo"/etc/*.toml; do
    conf="/etc/ishowtts-edge/$(basename "$toml")"
    in_root dpkg-query -W -f='${Conffiles}\n' ishowtts-edge | grep -q " $conf " \
        && ok "$conf is a conffile" || fail "$conf is not a conffile"
done
expect_stat() {  # path, "mode owner:group"
    local got
    got=$(in_root stat -c '%a %U:%G' "$1" 2>/dev/null || echo "absent")
    [ "$got" = "$2" ] && ok "$1 $got" || fail "$1 is '$got', expected '$2'"
}
for toml in "$repo"/etc/*.toml; do expect_stat "/etc/ishowtts-edge/$(basename "$toml")" "644 root:root"; done
expect_stat /var/lib/ishowtts-edge "750 ishowtts-edge:ishowtts-edge"
expect_stat /var/lib/ishowtts-edge/voices "750 ishowtts-edge:ishowtts-edge"
expect_stat /var/lib/ishowtts-edge/models "750 ishowtts-edge:ishowtts-edge"
expect_stat /var/cache/ishowtts-edge "750 ishowtts-edge:ishowtts-edge"
loose=$(find "$root/usr/lib/ishowtts-edge" "$root/etc/ishowtts-edge" \( -perm -o+w -o -perm -4000 -o -perm -2000 \) ! -type l)
[ -z "$loose" ] && ok "no world-writable or set-id files" || fail "world-writable or set-id: $loose"
grep -rlsF "$work" "$root/usr/lib/ishowtts-edge" --exclude='*.so*' --exclude='*.pyc' | head -3 | grep . \
    && fail "build paths leaked into the venv" || ok "no build paths in the venv"
pyc=$(find "$root/usr/lib/ishowtts-edge/venv" -name '*.pyc' | wc -l)
[ "$pyc" -gt 1000 ] && ok "postinst byte-compiled $pyc modules" || fail "only $pyc .pyc files after install"

step "system user"
passwd=$(in_root getent passwd ishowtts-edge || true)
[ -n "$passwd" ] && ok "$passwd" || fail "user ishowtts-edge missing"
case "$passwd" in *:/var/lib/ishowtts-edge:/usr/sbin/nologin) ok "home and shell" ;; *) fail "home/shell: $passwd" ;; esac
groups=$(in_root id -nG ishowtts-edge || true)
for g in ishowtts-edge video render jtop; do
    case " $groups " in *" $g "*) ok "member of $g" ;; *) fail "not in group $g ($groups)" ;; esac
done
[ "$(in_root id -u ishowtts-edge)" -lt 1000 ] && ok "system uid" || fail "uid is not a system uid"

step "units"
for link in /etc/systemd/system/multi-user.target.wants/ishowtts-edge.service \
            /etc/systemd/system/sockets.target.wants/ishowtts-edge-hwctl.socket; do
    [ -L "$root$link" ] && ok "enabled: $link" || fail "not enabled: $link"
done
# The Wyoming bridge opens a TCP port: installed, never enabled by the package.
[ ! -e "$root/etc/systemd/system/multi-user.target.wants/ishowtts-edge-wyoming.service" ] \
    && ok "ishowtts-edge-wyoming.service is not enabled" || fail "ishowtts-edge-wyoming.service was enabled at install"
# systemd-analyze verify exits 0 on unknown keys and bad values; any output is a failure.
verify_out=$(in_root systemd-analyze verify /lib/systemd/system/ishowtts-edge.service \
    /lib/systemd/system/ishowtts-edge-hwctl.socket /lib/systemd/system/ishowtts-edge-hwctl@.service \
    /lib/systemd/system/ishowtts-edge-wyoming.service 2>&1) \
    || fail "systemd-analyze verify exited non-zero"
[ -z "$verify_out" ] && ok "systemd-analyze verify: clean" || fail "systemd-analyze verify said: $verify_out"
in_root systemd-analyze security --offline=yes /lib/systemd/system/ishowtts-edge.service 2>&1 | tail -1 \
    | sed 's/^/  ishowtts-edge.service: /'
in_root systemd-analyze security --offline=yes /lib/systemd/system/ishowtts-edge-hwctl@.service 2>&1 | tail -1 \
    | sed 's/^/  ishowtts-edge-hwctl@.service: /'
# The bridge faces the network: its exposure must not exceed the GPU daemon's.
exposure() { in_root systemd-analyze security --offline=yes "/lib/systemd/system/$1" 2>&1 | sed -n 's/.*exposure level for .*: \([0-9.]*\).*/\1/p'; }
bridge_exposure=$(exposure ishowtts-edge-wyoming.service); daemon_exposure=$(exposure ishowtts-edge.service)
if [ -n "$bridge_exposure" ] && awk -v b="$bridge_exposure" -v d="$daemon_exposure" 'BEGIN { exit !(b <= d) }'; then
    ok "ishowtts-edge-wyoming.service exposure $bridge_exposure <= the daemon's $daemon_exposure"
else
    fail "ishowtts-edge-wyoming.service exposure '$bridge_exposure' above the daemon's '$daemon_exposure'"
fi

step "commands run from the installed package, without torch, as the service user"
as_user() { chroot --userspec=ishowtts-edge:ishowtts-edge "$root" /usr/bin/env -i PATH=/usr/bin:/bin LANG=C.UTF-8 "$@"; }
if out=$(as_user /usr/bin/ishowtts-edge --version 2>&1); then
    version=$(dpkg-deb -f "$deb" Version)
    case "$out" in *"${version%%-*}"*) ok "ishowtts-edge --version: $out" ;; *) fail "--version printed '$out', not $version" ;; esac
else
    fail "ishowtts-edge --version: $out"
fi
# The benchmark ships with the package, so an owner can measure their own unit (docs/benchmarks.md).
if out=$(as_user /usr/bin/ishowtts-edge bench --help 2>&1); then
    ok "ishowtts-edge bench --help ($(echo "$out" | head -1))"
else
    fail "ishowtts-edge bench --help: $out"
fi
if out=$(as_user /usr/bin/ishowtts-edge-wyoming --version 2>&1); then
    ok "ishowtts-edge-wyoming --version: $out"
else
    fail "ishowtts-edge-wyoming --version: $out"
fi
if out=$(in_root /usr/bin/ishowtts-edge-hwctl --help 2>&1); then
    ok "ishowtts-edge-hwctl --help ($(echo "$out" | head -1))"
else
    fail "ishowtts-edge-hwctl --help: $out"
fi
# The bundled binary wheels load from their relocated venv (numba needs a cache dir).
if out=$(as_user /usr/bin/env NUMBA_CACHE_DIR=/tmp /usr/lib/ishowtts-edge/venv/bin/python -c '
import numpy, scipy.signal, sklearn, numba, librosa, soundfile, zmq, pydantic, pydantic_settings
import safetensors, rjieba, pypinyin, sdnotify, yaml, ishowtts_edge.config, ishowtts_edge.wyoming_bridge.handler
print("numpy", numpy.__version__, "zmq", zmq.zmq_version(), "librosa", librosa.__version__)' 2>&1); then
    ok "bundled libraries import: $out"
else
    fail "bundled libraries do not import: $out"
fi

# torch comes from the system: the venv must see the system-wide dist-packages that
# `sudo pip3 install torch-*.whl` fills, behind its own site-packages.
if out=$(in_root /usr/lib/ishowtts-edge/venv/bin/python -c '
import sys, sysconfig
own = sysconfig.get_paths()["purelib"]
local = "/usr/local/lib/python%d.%d/dist-packages" % sys.version_info[:2]
assert local in sys.path, (local, sys.path)
assert sys.path.index(own) < sys.path.index(local), sys.path
print(local)' 2>&1); then
    ok "venv sees system-wide packages after its own: $out"
else
    fail "venv does not see the system-wide dist-packages: $out"
fi

step "reinstall (upgrade path)"
in_root env DEBIAN_FRONTEND=noninteractive dpkg -i "/tmp/$(basename "$deb")" >"$work/reinstall.log" 2>&1 \
    && ok "dpkg -i over itself" || { cat "$work/reinstall.log"; fail "reinstall"; }

step "remove: configuration and data stay"
echo "operator data" >"$root/var/lib/ishowtts-edge/voices/keep-me"
in_root dpkg --remove ishowtts-edge >"$work/remove.log" 2>&1 && ok "dpkg --remove" || { cat "$work/remove.log"; fail "remove"; }
[ -f "$root/etc/ishowtts-edge/ishowtts-edge.toml" ] && ok "config kept" || fail "config removed by remove"
[ -f "$root/var/lib/ishowtts-edge/voices/keep-me" ] && ok "data kept" || fail "data removed by remove"
[ ! -e "$root/usr/lib/ishowtts-edge" ] && ok "venv gone (byte code included)" \
    || fail "left in /usr/lib/ishowtts-edge: $(find "$root/usr/lib/ishowtts-edge" | head -5)"

step "purge: nothing left"
in_root dpkg --purge ishowtts-edge >"$work/purge.log" 2>&1 && ok "dpkg --purge" || { cat "$work/purge.log"; fail "purge"; }
snapshot >"$work/after.txt"
# systemd-sysusers keeps backups of the account files it edited; the account stays on
# purge on purpose (docs/packaging.md), so those are expected.
left=$(comm -13 "$work/before.txt" "$work/after.txt" | grep -v -x -E '\./etc/(passwd|group|shadow|gshadow)-' || true)
gone=$(comm -23 "$work/before.txt" "$work/after.txt" || true)
[ -z "$left" ] && ok "no files left behind" || fail "left behind after purge: $left"
[ -z "$gone" ] && ok "nothing else removed" || fail "removed by install/purge but not ours: $gone"
in_root getent passwd ishowtts-edge >/dev/null && ok "system user kept (by design)" || fail "user removed?"

step "live units under systemd-nspawn (tests/packaging/test_units_live.sh)"
live_rc=0
ISHOWTTS_DEB="$deb" ISHOWTTS_CACHE="$cache" "$repo/tests/packaging/test_units_live.sh" || live_rc=$?
case "$live_rc" in
    0) ok "live unit checks passed" ;;
    77) echo "skipped: no systemd-nspawn here (apt-get install systemd-container to run it)" ;;
    *) fail "live unit checks failed" ;;
esac

step "result"
if [ "$failures" -gt 0 ]; then
    echo "$failures check(s) failed"
    exit 1
fi
echo "all packaging checks passed"
