"""Run jetson-stats' REAL jtop.service against a FakeBoard, inside a private mount namespace.

The service hard-codes its paths, so the namespace provides them (reference section 2):

* tmpfs on /run (for /run/jtop.sock), the board's sys/ bound on /fake_sys (what
  JTOP_TESTING=true reads), the board's sys/devices/virtual bound on
  /sys/devices/virtual (thermal zones and DMI are not redirected by JTOP_TESTING);
* tmpfs on /home with /home/nvidia/jetson_clocks.sh = the board's fake jetson_clocks
  (jtop's second search path; /usr/bin stays untouched), the fake nvpmodel on PATH;
* a copy of /etc/group with a ``jtop`` group bound over /etc/group;
* PYTHONHOME pointing at a temp prefix whose lib/ links to the real one, so the
  service's ``<sys.base_prefix>/local/jtop`` config directory is a temp directory.

Mounts and processes (a PID namespace as well) end with the namespace's init.  The one host-side
trace is the empty mount point /fake_sys, created for the run and removed after
(jetson-stats' own test suite does the same).  ``run_probe`` runs a Python script
inside the namespace next to the service; the script gets the service's command
line and pid in $JTOP_SERVICE_CMD / $JTOP_SERVICE_PID so it can kill and restart it.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from .board import FakeBoard

FAKE_SYS = Path("/fake_sys")


def unavailable_reason() -> str | None:
    """Why the real service cannot run here (None if it can)."""
    if os.geteuid() != 0:
        return "the real jtop.service needs root (CI runs as root)"
    if shutil.which("unshare") is None:
        return "needs unshare(1) for a private mount namespace"
    try:
        import jtop  # noqa: F401
    except ImportError:
        return "jetson-stats is not installed"
    if FAKE_SYS.exists():
        return "/fake_sys already exists (another jtop test run?)"
    done = subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "tmpfs", "/run"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return f"cannot mount in a new namespace: {done.stderr.strip()}"
    return None


def run_probe(board: FakeBoard, work: Path, probe: str, env: dict[str, str], timeout: float = 120.0) -> subprocess.CompletedProcess:
    work.mkdir(parents=True, exist_ok=True)
    base = Path(sys.base_prefix)
    prefix = work / "prefix"
    (prefix / "local").mkdir(parents=True, exist_ok=True)
    for name in ("lib", "bin"):
        link = prefix / name
        if not link.exists():
            link.symlink_to(base / name)
    group = work / "group"
    text = Path("/etc/group").read_text()
    if not any(line.startswith("jtop:") for line in text.splitlines()):
        text += "jtop:x:64242:\n"
    group.write_text(text)
    probe_file = work / "probe.py"
    probe_file.write_text(probe)
    python = f"{base}/bin/python{sysconfig.get_python_version()}"
    site = sysconfig.get_paths()["purelib"]  # the venv's: the service's other imports
    import jtop

    # The jetson-stats the client imports (PYTHONPATH may lay another version over the venv's):
    # the service refuses a client of another major.minor, as on a real board.
    jtop_home = str(Path(jtop.__file__).resolve().parents[1])
    service_cmd = (
        f"env JTOP_SERVICE=True JTOP_TESTING=true PYTHONHOME={shlex.quote(str(prefix))} "
        f"PYTHONPATH={shlex.quote(jtop_home + os.pathsep + site)} {shlex.quote(python)} -m jtop --force"
    )
    q = shlex.quote
    script = f"""set -e
mount -t tmpfs tmpfs /run
mount --bind {q(str(board.root / 'sys'))} /fake_sys
mount --bind {q(str(board.root / 'sys/devices/virtual'))} /sys/devices/virtual
mount -t tmpfs tmpfs /home
mkdir -p /home/nvidia
cp {q(str(board.jetson_clocks))} /home/nvidia/jetson_clocks.sh
mount --bind {q(str(group))} /etc/group
export PATH={q(str(board.bin))}:$PATH
{service_cmd} >> {q(str(work / 'service.log'))} 2>&1 &
export JTOP_SERVICE_PID=$!
export JTOP_SERVICE_CMD={q(service_cmd + ' >> ' + str(work / 'service.log') + ' 2>&1')}
for i in $(seq 200); do [ -S /run/jtop.sock ] && break; sleep 0.05; done
set +e
{q(sys.executable)} {q(str(probe_file))}
rc=$?
kill $JTOP_SERVICE_PID 2>/dev/null
exit $rc
"""
    (work / "ns.sh").write_text(script)
    FAKE_SYS.mkdir()
    try:
        return subprocess.run(
            # a PID namespace too: when the script ends, every service it or the probe started dies
            ["unshare", "--mount", "--pid", "--fork", "--mount-proc", "--propagation", "private",
             "bash", str(work / "ns.sh")],
            capture_output=True, text=True, timeout=timeout, env={**os.environ, **env},
        )
    finally:
        FAKE_SYS.rmdir()
