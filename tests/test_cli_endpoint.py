"""The CLI says at once, in one line and with a documented exit status, that a daemon cannot be reached."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
from conftest import REPO
from fakes.hwctl_process import as_user, repo_env, user_python

# A wait this long means the CLI sat out its reply timeout (60 s by default, 120 s for status).
PROMPT_S = 30


def cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ishowtts_edge.cli", *argv],
        capture_output=True, text=True, timeout=PROMPT_S, cwd=REPO, env=env,
    )


def config_with_runtime_dir(tmp_path: Path, runtime: Path) -> Path:
    """No --endpoint: the CLI takes the default ipc://<runtime_dir>/tts.sock from the config."""
    config = tmp_path / "c.toml"
    config.write_text(f'[paths]\nruntime_dir = "{runtime}"\n')
    return config


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


def test_missing_socket_from_the_config_is_reported_at_once(tmp_path):
    config = config_with_runtime_dir(tmp_path, tmp_path / "run")
    say = cli("--config", str(config), "say", "Hello there.", "-o", str(tmp_path / "out.wav"))
    assert say.returncode == 69
    assert one_line(say.stderr) == f"ishowtts-edge: not_running: {tmp_path}/run/tts.sock does not exist: the daemon is not running"
    status = cli("--config", str(config), "status")
    assert status.returncode == 3
    assert "does not exist" in one_line(status.stdout)
    voices = cli("--config", str(config), "voices")
    assert voices.returncode == 69 and "does not exist" in one_line(voices.stderr)


def test_a_file_that_is_not_a_socket_and_a_stale_socket_are_reported_at_once(tmp_path):
    runtime = tmp_path / "run"
    runtime.mkdir()
    (runtime / "tts.sock").write_text("not a socket")
    config = config_with_runtime_dir(tmp_path, runtime)
    r = cli("--config", str(config), "say", "Hello.", "-o", str(tmp_path / "out.wav"))
    assert r.returncode == 69 and "is not a socket" in one_line(r.stderr)

    (runtime / "tts.sock").unlink()
    left = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    left.bind(str(runtime / "tts.sock"))  # what a killed daemon leaves behind: a socket nobody accepts on
    left.close()
    r = cli("--config", str(config), "status", "--json")
    assert r.returncode == 3
    assert '"state": "unreachable"' in one_line(r.stdout) and "nothing accepts on it" in r.stdout


def test_over_long_ipc_path_is_named_without_a_zeromq_error(tmp_path):
    endpoint = f"ipc:///tmp/{'x' * 120}.sock"
    r = cli("--endpoint", endpoint, "status")
    assert r.returncode == 64
    assert "at most 107" in one_line(r.stdout)
    r = cli("--endpoint", endpoint, "say", "Hello.")
    assert r.returncode == 64
    assert one_line(r.stderr).startswith(f"ishowtts-edge: bad_endpoint: {endpoint}: ipc path is 130 bytes")


def test_a_live_daemon_socket_still_gets_the_request(tmp_path):
    endpoint = f"ipc://{tmp_path}/tts.sock"
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.bind(endpoint)
    try:
        r = cli("--endpoint", endpoint, "--timeout", "0.5", "status")
        assert r.returncode == 3 and "timeout" in r.stdout  # the check let it through to a (silent) peer
        assert router.poll(1000)
    finally:
        router.close(linger=0)


def test_a_live_daemon_socket_sees_one_connection_per_request(tmp_path):
    """The check for a missing or stale socket probes only once ZeroMQ's own connection has failed:
    it connected to a live socket once more per attempt, which the daemon counts and logs."""
    import json
    import threading

    from zmq.utils.monitor import recv_monitor_message

    endpoint = f"ipc://{tmp_path}/tts.sock"
    context = zmq.Context.instance()
    router = context.socket(zmq.ROUTER)
    monitor = router.get_monitor_socket(zmq.EVENT_ACCEPTED)
    router.bind(endpoint)

    def answer() -> None:  # one voices request, answered as the daemon would
        identity, empty, header = router.recv_multipart()[:3]
        reply = {"v": 1, "ok": True, "op": "voices", "id": json.loads(header)["id"], "voices": []}
        router.send_multipart([identity, empty, json.dumps(reply).encode()])

    server = threading.Thread(target=answer)
    server.start()
    try:
        r = cli("--endpoint", endpoint, "voices", "--json")
        server.join(PROMPT_S)
        assert r.returncode == 0 and json.loads(r.stdout) == [], r.stderr
        accepted = 0
        while monitor.poll(500):
            recv_monitor_message(monitor)
            accepted += 1
        assert accepted == 1
    finally:
        router.disable_monitor()
        monitor.close(linger=0)
        router.close(linger=0)


def test_socket_the_user_may_not_use_names_the_group_to_join(world_tmp, users):
    runtime = world_tmp / "run"
    runtime.mkdir(mode=0o755)
    path = runtime / "tts.sock"
    router = zmq.Context.instance().socket(zmq.ROUTER)
    router.bind(f"ipc://{path}")
    try:
        os.chown(path, 0, users.gid)
        path.chmod(0o660)
        python = user_python(users.outsider)
        argv = [python, "-m", "ishowtts_edge.cli", "--endpoint", f"ipc://{path}"]
        env = repo_env()
        r = as_user(users.outsider, [*argv, "say", "Hello.", "-o", "/dev/null"], env=env)
        if "No module named" in r.stderr:
            pytest.skip(f"{python} lacks the package's dependencies for another user")
        assert r.returncode == 77
        line = one_line(r.stderr)
        assert line.startswith(f"ishowtts-edge: permission_denied: no permission to use {path}: join group '{users.group}'")
        r = as_user(users.outsider, [*argv, "status"], env=env)
        assert r.returncode == 77 and users.group in one_line(r.stdout)
        # A member of the group gets through to the socket.
        r = as_user(users.member, [*argv, "--timeout", "0.5", "status"], env=env)
        assert r.returncode == 3 and "timeout" in r.stdout
    finally:
        router.close(linger=0)


@pytest.mark.parametrize("timeout", ["nan", "inf", "0", "-1", "soon"])
def test_a_reply_timeout_that_is_not_a_positive_number_is_a_usage_error(tmp_path, timeout):
    """Checked before anything is sent: nan crashed in the poll with a traceback, 0 "timed out" at once."""
    server = zmq.Context.instance().socket(zmq.ROUTER)  # something that accepts: the timeout would be reached
    server.bind(f"ipc://{tmp_path}/tts.sock")
    try:
        r = cli("--endpoint", f"ipc://{tmp_path}/tts.sock", "metrics", "--timeout", timeout)
    finally:
        server.close(linger=0)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "--timeout" in r.stderr


IDLE_CLIENT = r"""
import json, sys, threading, time
import zmq
from ishowtts_edge.client import Client

endpoint, other = sys.argv[1], sys.argv[2]
context = zmq.Context()
context.setsockopt(zmq.RECONNECT_IVL, 1)  # a retry a millisecond: minutes of an outage in seconds
router = context.socket(zmq.ROUTER)
router.bind(endpoint)

def answer():
    identity, empty, header = router.recv_multipart()[:3]
    reply = {"v": 1, "ok": True, "op": "ping", "id": json.loads(header)["id"], "pong": True}
    router.send_multipart([identity, empty, json.dumps(reply).encode()])

server = threading.Thread(target=answer)
server.start()
client = Client(endpoint, timeout_s=10, check=True, context=context)
assert client.ping()["pong"] is True
server.join()
router.close(linger=0)  # the daemon is gone; the client sits idle, its socket retrying
time.sleep(4)
pair = [context.socket(zmq.PAIR) for _ in range(2)]
pair[0].bind(other)
pair[1].connect(other)
pair[0].send(b"x")
assert pair[1].poll(5000), "the process's other sockets stopped"
client.close()
print("ok")
"""


def test_an_idle_checking_client_keeps_no_watch_that_a_gone_daemon_could_fill(tmp_path):
    """The connection watch lives for one request: between requests nothing reads it, and with the
    daemon gone it filled with reconnect events until libzmq stalled the context's I/O thread, so
    the process's other sockets stopped and closing the client hung."""
    r = subprocess.run([sys.executable, "-c", IDLE_CLIENT, f"ipc://{tmp_path}/tts.sock", f"ipc://{tmp_path}/other.sock"],
                       capture_output=True, text=True, timeout=PROMPT_S, cwd=REPO)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
