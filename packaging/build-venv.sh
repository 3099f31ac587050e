#!/bin/sh
# Build the application venv the package carries, offline, from WHEELHOUSE.
#
# The venv is created in the package staging tree (DESTDIR + PREFIX) with
# --system-site-packages, so at run time it sees the torch/torchaudio that JetPack put
# on the system and carries everything else itself.  Paths written at build time (the
# staging directory) are rewritten to PREFIX; no byte code is shipped (the postinst
# compiles it, the prerm removes it, so dpkg owns exactly the sources).
#
# usage: packaging/build-venv.sh DESTDIR PREFIX WHEELHOUSE [PYTHON]
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
destdir=${1:?usage: build-venv.sh DESTDIR PREFIX WHEELHOUSE [PYTHON]}
prefix=${2:?PREFIX, e.g. /usr/lib/ishowtts-edge/venv}
wheelhouse=${3:?WHEELHOUSE filled by packaging/fetch-wheels.sh}
python=${4:-/usr/bin/python3}
# Pin the venv to the interpreter's minor version (python3.11, not python3): a later
# default python3 must not be picked up by a venv whose site-packages is python3.11's.
pyexe=$(readlink -f "$python")
stage="$destdir$prefix"

rm -rf "$stage"
mkdir -p "$(dirname "$stage")"
"$pyexe" -m venv --system-site-packages "$stage"
vpy="$stage/bin/python"
pipi="$vpy -m pip install --quiet --no-index --find-links $wheelhouse --no-deps --no-compile --disable-pip-version-check"

# Our own wheel, built offline (flit_core comes from the wheelhouse).
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
PIP_NO_INDEX=1 PIP_FIND_LINKS="$wheelhouse" \
    "$vpy" -m pip wheel --quiet --no-deps --no-cache-dir --wheel-dir "$build" "$here"
# --require-hashes is not used: the pins are exact and the wheelhouse is ours.
$pipi -r "$here/requirements/bundle.txt"
$pipi "$build"/ishowtts_edge-*.whl

# Every requirement of every bundled distribution must be satisfied inside the venv,
# except the ones the system provides on purpose: torch/torchaudio (JetPack wheels) and
# jetson-stats, whose client must match the host's jtop.service major.minor, so it is
# the host's copy (pip3 install jetson-stats) or none (telemetry falls back to sysfs).
"$vpy" "$here/packaging/check_bundle.py" \
    --allow-missing torch torchaudio jetson-stats --ignore-requires-of f5-tts

"$vpy" -m pip uninstall --quiet --yes pip setuptools >/dev/null 2>&1 || true

# Console scripts: keep ours only (f5-tts, numba, huggingface ... bring their own that
# would need packages we do not carry), and point them at the final interpreter.
# hwctl runs isolated (-I): no PYTHON* variables, no user site, no cwd on path.
for script in "$stage"/bin/*; do
    name=$(basename "$script")
    case "$name" in
        python|python3|python3.*|activate|activate.csh|activate.fish|Activate.ps1) ;;
        ishowtts-edge|ishowtts-edge-wyoming) sed -i "1s|^#!.*|#!$prefix/bin/python|" "$script" ;;
        ishowtts-edge-hwctl) sed -i "1s|^#!.*|#!$prefix/bin/python -I|" "$script" ;;
        *) rm -f "$script" ;;
    esac
done
sed -i "s|$stage|$prefix|g" "$stage"/bin/activate* "$stage/pyvenv.cfg"
rm -f "$stage"/bin/Activate.ps1

# Upstream test suites (about 50 MB) are not run on the appliance; library modules are
# not programs (their stray shebangs and exec bits would make them look like ones).
site=$("$vpy" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
find "$site" -mindepth 2 -type d -name tests -prune -exec rm -rf {} +
rm -rf "$site/joblib/test"
find "$site" -type f \( -name '*.py' -o -name '*.sh' -o -name '*.pyx' \) -perm /111 -exec chmod a-x {} +
find "$site" -name .gitignore -type f -delete
rmdir --ignore-fail-on-non-empty "$stage/include/python"* "$stage/include" 2>/dev/null || true

# Build-path and reproducibility residue.
find "$stage" -name __pycache__ -type d -prune -exec rm -rf {} +
find "$stage" -path '*.dist-info/direct_url.json' -delete
find "$stage" -path '*.dist-info/INSTALLER' -delete
find "$stage" -path '*.dist-info/REQUESTED' -delete
if grep -rl --binary-files=without-match "$destdir" "$stage" >/dev/null 2>&1; then
    echo "build-venv: staging path $destdir leaked into:" >&2
    grep -rl --binary-files=without-match "$destdir" "$stage" >&2
    exit 1
fi
echo "build-venv: $(du -sh "$stage" | cut -f1) in $prefix ($("$pyexe" -V))"
