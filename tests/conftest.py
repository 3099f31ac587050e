"""Shared fixtures: a real daemon process on a real ipc socket (demo model on CPU), and a small
random-weight checkpoint written through the engine's own save path."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ishowtts_edge.config import EngineConfig, PathsConfig, Settings, VoiceConfig
from ishowtts_edge.engine.demo import DemoBundle, synth_reference_wave, write_demo_bundle

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

    def __init__(self, tmp: Path, cache: Path, config: Path | None = None, **env: str) -> None:
        self.tmp = tmp
        self.endpoint = f"ipc://{tmp / 'run' / 'tts.sock'}"
        self.log_path = tmp / "daemon.log"
        args = [sys.executable, "-m", "ishowtts_edge.cli"]
        if config is not None:
            args += ["--config", str(config)]
        args.append("serve")
        self.env = daemon_env(tmp, cache, **env)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(args, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, cwd=tmp)

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



@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> DemoBundle:
    return write_demo_bundle(tmp_path_factory.mktemp("tiny") / "bundle", seed=7)


def write_reference(path: Path, seconds: float = 2.5, rate: int = 24000, seed: int = 0) -> Path:
    wave = synth_reference_wave(seconds=seconds, sample_rate=rate, seed=seed)
    sf.write(path, wave, rate, subtype="PCM_16")
    return path


def engine_settings(bundle: DemoBundle, tmp_path: Path, voices: dict[str, VoiceConfig] | None = None, **engine) -> Settings:
    return Settings(
        paths=PathsConfig(runtime_dir=tmp_path / "run", state_dir=tmp_path / "state", cache_dir=tmp_path / "cache"),
        engine=EngineConfig(
            device="cpu",
            model=str(bundle.arch_path),
            checkpoint=bundle.checkpoint,
            vocab=bundle.vocab,
            vocoder_dir=bundle.vocoder_dir,
            **engine,
        ),
        voices=voices or {},
        default_voice=next(iter(voices)) if voices else "demo",
    )


def upstream_utils_infer():
    """f5-tts's own inference module, imported through our shim (it needs the test extra)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from ishowtts_edge.engine.upstream import ensure_f5_model_importable

        ensure_f5_model_importable()
        import f5_tts.infer.utils_infer as utils_infer
    return utils_infer


@pytest.fixture
def reference_wav(tmp_path: Path) -> Path:
    return write_reference(tmp_path / "ref.wav")


def tone(seconds: float, rate: int = 24000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
