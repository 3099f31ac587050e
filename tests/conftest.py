"""Shared fixtures: a real daemon process on a real ipc socket, with the demo model on CPU."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def daemon_env(tmp: Path, cache: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "ISHOWTTS_EDGE_PATHS__RUNTIME_DIR": str(tmp / "run"),
            "ISHOWTTS_EDGE_PATHS__STATE_DIR": str(tmp / "state"),
            "ISHOWTTS_EDGE_PATHS__CACHE_DIR": str(cache),
            "ISHOWTTS_EDGE_ENGINE__DEVICE": "cpu",
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        }
    )
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env.update(extra)
    return env


class DaemonProcess:
    """``ishowtts-edge serve`` as a child process, its log captured to a file."""

    def __init__(self, tmp: Path, cache: Path, config: Path | None = None, preexec_fn=None, **env: str) -> None:
        self.tmp = tmp
        self.endpoint = f"ipc://{tmp / 'run' / 'tts.sock'}"
        self.log_path = tmp / "daemon.log"
        # `serve --config X`, as the man page writes it (the Makefile puts --config first).
        args = [sys.executable, "-m", "ishowtts_edge.cli", "serve"]
        if config is not None:
            args += ["--config", str(config)]
        self.env = daemon_env(tmp, cache, **env)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=tmp,
                                     preexec_fn=preexec_fn)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 240.0) -> dict:
        from ishowtts_edge.client import Client, ClientError

        deadline = time.monotonic() + timeout
        with Client(self.endpoint, timeout_s=2.0, retries=0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    health = client.health()
                    if health["state"] not in ("starting", "loading", "warming"):
                        return health
                except ClientError:
                    pass
                time.sleep(0.2)
        raise AssertionError(f"daemon not ready after {timeout}s:\n{self.log()}")

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def world_tmp():
    """A temp dir other users can traverse (pytest's tmp_path is 0700 root): the root helper,
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
