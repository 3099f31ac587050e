"""Shared fixtures: a real daemon process on a real ipc socket, with the demo model on CPU."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from ishowtts_edge.bench.daemon_process import DaemonProcess as _DaemonProcess
from ishowtts_edge.bench.daemon_process import child_env

REPO = Path(__file__).resolve().parent.parent


def daemon_paths(tmp: Path, cache: Path) -> dict[str, str]:
    """A test daemon's directories: runtime and state under ``tmp``, the session's demo cache, the CPU."""
    return {
        "ISHOWTTS_EDGE_PATHS__RUNTIME_DIR": str(tmp / "run"),
        "ISHOWTTS_EDGE_PATHS__STATE_DIR": str(tmp / "state"),
        "ISHOWTTS_EDGE_PATHS__CACHE_DIR": str(cache),
        "ISHOWTTS_EDGE_ENGINE__DEVICE": "cpu",
        # Never the host's node_exporter directory; a test that wants the textfile creates this.
        "ISHOWTTS_EDGE_METRICS__TEXTFILE_DIR": str(tmp / "metrics"),
    }


def daemon_env(tmp: Path, cache: Path, **extra: str) -> dict[str, str]:
    """The environment of a process that must find the test daemon of ``tmp`` (the Wyoming bridge)."""
    return child_env({**daemon_paths(tmp, cache), **extra})


class DaemonProcess(_DaemonProcess):
    """The daemon on a test's own directories (runtime and state under ``tmp``, the session's demo
    cache) on the CPU; ``env`` adds or overrides variables (NOTIFY_SOCKET, ISHOWTTS_EDGE_*)."""

    def __init__(self, tmp: Path, cache: Path, config: Path | None = None, preexec_fn=None, **env: str) -> None:
        self.tmp = tmp
        super().__init__(f"ipc://{tmp / 'run' / 'tts.sock'}", tmp / "daemon.log", config=config,
                         env={**daemon_paths(tmp, cache), **env}, cwd=tmp, preexec_fn=preexec_fn)


@pytest.fixture(scope="module")
def users():
    """Unprivileged users for the privilege tests (root only: they are created and removed)."""
    from fakes.hwctl_process import create_users, require_root

    require_root()
    created = create_users()
    yield created
    created.cleanup()


@pytest.fixture
def world_tmp():
    """A temp dir other users can traverse (pytest's tmp_path is 0700 root): hwctl,
    its socket and the fake board live here for tests that switch uid."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="ihwt-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory) -> Path:
    """One cache directory per test session: the demo checkpoint is generated once."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, demo_cache):
    tmp = tmp_path_factory.mktemp("daemon")
    proc = DaemonProcess(tmp, demo_cache, ISHOWTTS_EDGE_HARDWARE__ENABLED="false")
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []

    def collect(self, until, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                continue
            self.messages.extend(data.decode("utf-8").split("\n"))
            if until(self.messages):
                return self.messages
        raise AssertionError(f"notify condition not met in {timeout}s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()
