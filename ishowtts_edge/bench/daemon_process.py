"""``ishowtts-edge serve`` as a child process, its log captured to a file.

The benchmark's daemon section and the tests' daemon fixture (tests/conftest.py) both
start the daemon through this class, so both run it the same way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from ishowtts_edge.service_state import STARTING_STATES

#: The directory holding this ishowtts_edge package: the child imports the same code as its parent.
SOURCE_ROOT = Path(__file__).resolve().parents[2]
#: systemd's variables for the service itself: a child started from a unit must not answer in its name.
SERVICE_VARIABLES = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def stop_process(proc: subprocess.Popen, timeout: float) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; the exit status (negative: the signal that ended it)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class DaemonNotReady(RuntimeError):
    """The daemon exited, or did not leave its start-up states in time; the message ends with its log."""


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """The caller's environment without systemd's service variables, with this package first on the path."""
    env = dict(os.environ)
    for key in SERVICE_VARIABLES:
        env.pop(key, None)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(SOURCE_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


class DaemonProcess:
    """One daemon process: ``endpoint`` is where it serves (from its config), ``env`` adds or overrides variables."""

    def __init__(self, endpoint: str, log_path: Path, config: Path | None = None,
                 env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.endpoint = endpoint
        self.log_path = log_path
        # `serve --config X`, as the man page writes it (the Makefile puts --config first).
        args = [sys.executable, "-m", "ishowtts_edge.cli", "serve"]
        if config is not None:
            args += ["--config", str(config)]
        self.env = child_env(env or {})
        self._log = open(log_path, "wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=cwd,
                                     preexec_fn=preexec_fn)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 240.0) -> dict[str, Any]:
        """The first ``health`` reply past the start-up states (ready, degraded, ...); DaemonNotReady otherwise."""
        from ishowtts_edge.client import Client, ClientError

        deadline = time.monotonic() + timeout
        with Client(self.endpoint, timeout_s=2.0, retries=0) as client:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise DaemonNotReady(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    health = client.health()
                    if health["state"] not in STARTING_STATES:
                        return health
                except ClientError:
                    pass
                time.sleep(0.2)
        raise DaemonNotReady(f"daemon not ready after {timeout:.0f} s:\n{self.log()}")

    def peak_rss_bytes(self) -> int | None:
        """VmHWM of the daemon (Linux); on a Jetson GPU memory is the same DRAM, but not counted here."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            pass
        return None

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; the exit status."""
        code = stop_process(self.proc, timeout)
        self._log.close()
        return code
