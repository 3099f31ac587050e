#!/bin/sh
# Fill WHEELHOUSE with a wheel for every pin in requirements/bundle.txt, for the Python
# and architecture this runs on, plus flit_core (to build our own wheel offline).
#
# This is the only step of the .deb build that needs the network.  It is a no-op when
# WHEELHOUSE already holds the wheels for the current bundle.txt, Python and machine
# (the stamp file), so CI caches WHEELHOUSE and an offline builder pre-fills it.
#
# usage: packaging/fetch-wheels.sh WHEELHOUSE [PYTHON]
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
wheelhouse=${1:?usage: fetch-wheels.sh WHEELHOUSE [PYTHON]}
python=${2:-/usr/bin/python3}
bundle="$here/requirements/bundle.txt"

key=$( { cat "$bundle"; "$python" -c 'import sys, platform; print(sys.version_info[:2], platform.machine())'; } | sha256sum | cut -d' ' -f1)
stamp="$wheelhouse/.bundle-$key"
if [ -f "$stamp" ]; then
    echo "fetch-wheels: $wheelhouse is current for this bundle ($key)"
    exit 0
fi

mkdir -p "$wheelhouse"
tool=$(mktemp -d)
trap 'rm -rf "$tool"' EXIT
# A throwaway pip of the target Python: the builder's own pip may be too old (Ubuntu
# 22.04's 22.0) or belong to another interpreter.
"$python" -m venv "$tool/venv"
"$tool/venv/bin/python" -m pip install -q --upgrade "pip>=23.1"
# pip wheel copies a published wheel when one fits this platform and builds the few
# sdist-only pure-Python packages (encodec, sdnotify, docopt).  --no-deps: the pins are the
# whole closure (torch excluded on purpose; see bundle.txt).
"$tool/venv/bin/python" -m pip wheel -q --no-deps --wheel-dir "$wheelhouse" -r "$bundle"
"$tool/venv/bin/python" -m pip download -q --no-deps --dest "$wheelhouse" "flit_core>=3.4,<4"
rm -f "$wheelhouse"/.bundle-*
touch "$stamp"
echo "fetch-wheels: $(ls "$wheelhouse" | wc -l) wheels in $wheelhouse"
