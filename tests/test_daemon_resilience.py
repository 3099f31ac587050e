"""No client can stop or starve the running daemon: a real daemon process on a real ipc socket,
started with a small descriptor limit, against a second daemon, idle connections by the hundred
and a client that pipelines requests without reading the replies."""

from __future__ import annotations

import json
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from conftest import REPO, DaemonProcess
from ishowtts_edge.client import Client

NOFILE = 512
MAX_CONNECTIONS = 64


def _small_descriptor_limit() -> None:
    # Soft below hard: the daemon raises its soft limit to the hard one at start.
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, NOFILE))


@pytest.fixture(scope="module")
def limited(tmp_path_factory, demo_cache):
    tmp = tmp_path_factory.mktemp("limited")
    # A socket file left by a crash, nobody behind it: cleaned up and reused at start.
    (tmp / "run").mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp / "run" / "tts.sock"))
    stale.close()
    config = tmp / "edge.toml"
    config.write_text(f"[hardware]\nenabled = false\n[server]\nmax_connections = {MAX_CONNECTIONS}\n")
    proc = DaemonProcess(tmp, demo_cache, config=config, preexec_fn=_small_descriptor_limit)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


def _soft_nofile(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no Max open files line")


def _reads_eof(sock: socket.socket) -> bool:
    sock.settimeout(0.0)
    try:
        while sock.recv(4096):
            pass
        return True
    except BlockingIOError:
        return False


def test_a_stale_socket_file_is_replaced_and_the_descriptor_limit_raised(limited):
    assert "stale socket removed" in limited.log()
    assert _soft_nofile(limited.proc.pid) == NOFILE
    with Client(limited.endpoint, timeout_s=10) as c:
        assert c.ping()["pong"] is True


def test_a_second_daemon_on_the_same_endpoint_refuses_to_start_and_leaves_the_first_alone(limited, tmp_path):
    env = dict(limited.env, ISHOWTTS_EDGE_PATHS__RUNTIME_DIR=str(tmp_path / "other-run"),
               ISHOWTTS_EDGE_SERVER__ENDPOINT=limited.endpoint)
    r = subprocess.run([sys.executable, "-m", "ishowtts_edge.cli", "serve"], env=env, capture_output=True, text=True,
                       timeout=120, cwd=REPO)
    assert r.returncode == 73, r.stderr
    assert "cannot listen" in r.stderr and "in use by another process" in r.stderr
    sock = Path(limited.endpoint[len("ipc://"):])
    assert sock.is_socket()  # before: the second daemon unlinked it and bound its own
    with Client(limited.endpoint, timeout_s=10) as c:
        assert c.ping()["pong"] is True
    assert limited.proc.poll() is None


def test_an_integer_id_comes_back_as_an_integer_and_bulk_work_is_served(limited):
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(limited.endpoint)
    try:
        for header in ({"op": "ping", "id": 41}, {"op": "synthesize", "id": 42, "text": 5},
                       {"op": "synthesize", "id": 43, "text": "Bulk.", "priority": "bulk", "seed": 1}):
            sock.send_multipart([json.dumps(header).encode()])
            assert sock.poll(60000)
            reply = json.loads(sock.recv_multipart()[0])
            assert reply["id"] == header["id"], reply  # before: "41", a string
        assert reply["ok"] is True, reply
    finally:
        sock.close()
    with Client(limited.endpoint, timeout_s=60) as c:
        assert c.synthesize("Bulk again.", priority="bulk", seed=1).header["ok"] is True


def test_hundreds_of_idle_connections_are_refused_above_the_cap_and_the_others_still_served(limited):
    """Before: ~NOFILE idle connections made libzmq abort the daemon (EMFILE in the ipc accept)."""
    path = limited.endpoint[len("ipc://"):]
    ctx = zmq.Context.instance()
    kept = ctx.socket(zmq.REQ)
    kept.setsockopt(zmq.LINGER, 0)
    kept.connect(limited.endpoint)
    kept.send_multipart([json.dumps({"op": "ping", "id": "before"}).encode()])
    assert kept.poll(10000) and json.loads(kept.recv_multipart()[0])["id"] == "before"
    idle = []
    try:
        for _ in range(NOFILE + 100):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            idle.append(s)
            time.sleep(0.002)
        assert limited.proc.poll() is None, limited.log()
        kept.send_multipart([json.dumps({"op": "status", "id": "during"}).encode()])
        assert kept.poll(10000), "a client connected before the flood is no longer served"
        status = json.loads(kept.recv_multipart()[0])
        connections = status["requests"]["connections"]
        assert connections["max"] == MAX_CONNECTIONS
        assert connections["open"] <= MAX_CONNECTIONS and connections["refused"] >= len(idle) - MAX_CONNECTIONS
        # A refused connection is shut at once: its peer reads end-of-file (after ZeroMQ's greeting, maybe).
        assert sum(_reads_eof(s) for s in idle) >= len(idle) - MAX_CONNECTIONS
    finally:
        for s in idle:
            s.close()
    # Below the cap again: a new client gets in.
    with Client(limited.endpoint, timeout_s=10) as c:
        assert c.ping()["pong"] is True
    kept.close()
    assert "connection refused: too many clients" in limited.log()


def test_a_tight_burst_of_three_times_the_cap_leaves_at_most_the_cap_open_and_serves_on(limited):
    """Connections opened as fast as a loop can (no pause, unlike the test above): the gate shuts
    every one above the cap, however far libzmq's accepting runs ahead of it, and a client that
    was connected before keeps being served, synthesis included."""
    path = limited.endpoint[len("ipc://"):]
    kept = zmq.Context.instance().socket(zmq.REQ)
    kept.setsockopt(zmq.LINGER, 0)
    kept.connect(limited.endpoint)

    def ask(header: dict, timeout_ms: int = 10000) -> dict:
        kept.send_multipart([json.dumps(header).encode()])
        assert kept.poll(timeout_ms), f"no reply to {header['op']}"
        return json.loads(kept.recv_multipart()[0])

    assert ask({"op": "ping"})["ok"]
    refused_before = ask({"op": "status"})["requests"]["connections"]["refused"]
    burst = []
    try:
        for _ in range(3 * MAX_CONNECTIONS):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            burst.append(s)
        deadline = time.monotonic() + 30
        while (still_open := [s for s in burst if not _reads_eof(s)]) and len(still_open) + 1 > MAX_CONNECTIONS \
                and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(still_open) + 1 <= MAX_CONNECTIONS  # the kept client holds one place
        assert limited.proc.poll() is None, limited.log()
        connections = ask({"op": "status"})["requests"]["connections"]
        assert connections["open"] <= MAX_CONNECTIONS
        assert connections["refused"] - refused_before >= len(burst) - len(still_open)
        spoken = ask({"op": "synthesize", "text": "Still served.", "nfe_step": 2, "seed": 1}, 120_000)
        assert spoken["ok"] and spoken["samples"] > 0
    finally:
        for s in burst:
            s.close()
        kept.close()


def test_a_client_that_never_reads_cannot_block_the_daemon_or_its_stop(limited):
    """A DEALER pipelining thousands of requests without reading: others are answered all along,
    and SIGTERM in the middle of it stops the daemon cleanly (before: wedged, SIGKILL needed)."""
    flood = zmq.Context.instance().socket(zmq.DEALER)
    flood.setsockopt(zmq.LINGER, 0)
    flood.setsockopt(zmq.RCVHWM, 1)
    flood.setsockopt(zmq.SNDTIMEO, 2000)
    flood.connect(limited.endpoint)
    stop = threading.Event()
    sent = {"n": 0}

    def pipeline() -> None:
        try:
            while not stop.is_set():
                flood.send_multipart([b"", json.dumps({"op": "status", "id": sent["n"]}).encode()])
                sent["n"] += 1
        except zmq.ZMQError:
            pass

    sender = threading.Thread(target=pipeline)
    sender.start()
    try:
        with Client(limited.endpoint, timeout_s=10, retries=0) as c:
            while True:
                assert c.ping()["pong"] is True
                status = c.status()
                if status["requests"]["replies_dropped"].get("peer_full", 0) > 0 and sent["n"] > 5000:
                    break
        started = time.monotonic()
        limited.proc.send_signal(signal.SIGTERM)
        assert limited.proc.wait(60) == 0, limited.log()
        assert time.monotonic() - started < 20
        assert not Path(limited.endpoint[len("ipc://"):]).exists()
    finally:
        stop.set()
        sender.join(10)
        flood.close()


def test_eight_clients_each_waiting_on_one_request_are_all_served_in_turn_without_busy(daemon):
    """Eight apps, one request at a time each (REQ sockets, as the Client uses): with the default
    queue every request waits its turn instead of being refused, and the peers are served in turn,
    so no client's requests all land after another's."""
    clients, per_client = 8, 3
    finished: list[str] = []
    errors: list[str] = []
    lock = threading.Lock()

    def app(name: str) -> None:
        with Client(daemon.endpoint, timeout_s=240, retries=0) as client:
            for i in range(per_client):
                try:
                    client.synthesize(f"Client {name} request {i}.", seed=i, nfe_step=2, format="pcm_s16le")
                except Exception as exc:  # noqa: BLE001 - collected and asserted below
                    with lock:
                        errors.append(f"{name}/{i}: {exc}")
                    return
                with lock:
                    finished.append(name)

    threads = [threading.Thread(target=app, args=(str(n),)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert errors == []
    assert len(finished) == clients * per_client
    # Round-robin: every client finished its first request before any finished its last.
    first_done = max(finished.index(str(n)) for n in range(clients))
    last_started = min(len(finished) - 1 - finished[::-1].index(str(n)) for n in range(clients))
    assert first_done < last_started, finished
