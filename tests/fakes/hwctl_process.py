"""Run the REAL ishowtts-edge-hwctl as a separate process, and clients as other users.

CI runs as root, so unprivileged peers are real users created with useradd and the
client runs under setpriv with their uid/gid.  Everything that needs root skips
(with the reason) when the suite is not run as root.
"""

from __future__ import annotations

import functools
import grp
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ishowtts_edge.bench.daemon_process import stop_process

REPO = Path(__file__).resolve().parents[2]

#: A stdlib-only client (the unprivileged user may not be able to read the repo or venv).
RAW_CLIENT = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(json.dumps({"connect_error": type(exc).__name__})); sys.exit(0)
try:
    s.sendall(sys.argv[2].encode() + b"\n")
except BrokenPipeError:
    pass  # a refused peer gets its reply without the request being read
buf = b""
while b"\n" not in buf:
    chunk = s.recv(65536)
    if not chunk:
        break
    buf += chunk
print(buf.decode().strip() or json.dumps({"closed": True}))
"""


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: runs hwctl, creates users and switches uid (CI runs as root)")


def repo_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int


@dataclass
class TestUsers:
    group: str
    gid: int
    member: User  # primary group = hwctl's allowed group
    outsider: User  # its own group: neither allowed user nor group

    def cleanup(self) -> None:
        for user in (self.member, self.outsider):
            subprocess.run(["userdel", user.name], capture_output=True)
        subprocess.run(["groupdel", self.outsider.name], capture_output=True)
        subprocess.run(["groupdel", self.group], capture_output=True)


def create_users() -> TestUsers:
    tag = f"{os.getpid() % 100000}"
    group, member, outsider = f"ihwt-grp{tag}", f"ihwt-in{tag}", f"ihwt-out{tag}"
    run = lambda *argv: subprocess.run(argv, check=True, capture_output=True)  # noqa: E731
    run("groupadd", group)
    run("useradd", "-M", "-N", "-g", group, "-s", "/usr/sbin/nologin", member)
    run("groupadd", outsider)
    run("useradd", "-M", "-N", "-g", outsider, "-s", "/usr/sbin/nologin", outsider)
    users = TestUsers(
        group,
        grp.getgrnam(group).gr_gid,
        User(member, pwd.getpwnam(member).pw_uid, grp.getgrnam(group).gr_gid),
        User(outsider, pwd.getpwnam(outsider).pw_uid, grp.getgrnam(outsider).gr_gid),
    )
    return users


@functools.lru_cache(maxsize=None)
def user_python(user: User) -> str:
    """An interpreter the user can execute (the venv may live under a 0700 /root)."""
    for candidate in (sys.executable, "/usr/bin/python3", shutil.which("python3") or ""):
        if candidate and as_user(user, [candidate, "-c", "pass"]).returncode == 0:
            return candidate
    pytest.skip(f"no python interpreter that user {user.name} can run")


def as_user(user: User, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--inh-caps=-all", *argv],
        capture_output=True, text=True, timeout=60, cwd="/", **kwargs,
    )


def raw_request(user: User, python: str, socket_path: Path, line: str) -> dict:
    """Send one raw line as ``user`` and return hwctl's JSON reply."""
    done = as_user(user, [python, "-c", RAW_CLIENT, str(socket_path), line])
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def write_hwctl_config(path: Path, board, state_dir: Path, **overrides) -> Path:
    values = {
        "nvpmodel": str(board.nvpmodel),
        "jetson_clocks": str(board.jetson_clocks),
        "state_dir": str(state_dir),
        "timeout_s": 15,
        "allowed_users": [],
        "allowed_groups": [],
        "power_modes": ["MAXN", "MODE_50W"],
    }
    values.update(overrides)
    lines = [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)
    return path


def board_daemon_toml(board, hwctl_socket: Path) -> str:
    """The daemon's [hardware] and [telemetry] sections for a FakeBoard behind a running hwctl."""
    return f"""
[hardware]
hwctl_socket = "{hwctl_socket}"
nvpmodel = "{board.nvpmodel}"
jetson_clocks = "{board.jetson_clocks}"

[telemetry]
sources = ["sysfs"]
sysfs_root = "{board.sysfs_root}"
"""


class HwctlProcess:
    """``python -m ishowtts_edge.hwctl --listen SOCK`` as root, in a world-traversable temp dir."""

    def __init__(self, config: Path, socket_mode: str = "0666", socket_group: str | None = None):
        self.dir = Path(tempfile.mkdtemp(prefix="hwctl-"))
        self.dir.chmod(0o755)
        self.socket = self.dir / "hwctl.sock"
        self.log_path = self.dir / "hwctl.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ishowtts_edge.hwctl", "--listen", str(self.socket),
             "--config", str(config), "--socket-mode", socket_mode,
             *(["--socket-group", socket_group] if socket_group else [])],
            env=repo_env(), stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                output = self.log()
                self.stop()
                raise RuntimeError(f"hwctl did not start: {output}")
            time.sleep(0.02)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, 10)
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
