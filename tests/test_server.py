"""The serving loop on a real ROUTER socket, with a backend whose behaviour the test controls.

The engine is replaced here (only here) because these tests are about the server's
contract: a backend that raises, blocks or refuses must still yield exactly one reply.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import zmq

from ishowtts_edge.protocol import ErrorCode, Limits, ServiceError
from ishowtts_edge.server import Server


class ControlledBackend:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.started = threading.Event()
        self.refuse: ServiceError | None = None

    def accepting(self, request):
        return self.refuse

    def control(self, request):
        if request.header.get("explode"):
            raise ValueError("status provider broke")
        return {"state": "ready"}

    def synthesize(self, request):
        text = request.params.text
        if text == "raise":
            raise RuntimeError("engine fell over")
        if text == "oom":
            raise ServiceError(ErrorCode.OUT_OF_MEMORY, "CUDA out of memory")
        self.started.set()
        self.release.wait(30)
        return {"text": text}, [b"audio"]


@pytest.fixture
def served(tmp_path):
    backend = ControlledBackend()
    server = Server(f"ipc://{tmp_path}/s.sock", backend, Limits(1 << 20, 100, 1 << 16), max_queue=1)
    server.bind()
    stop = threading.Event()
    loop = threading.Thread(target=lambda: [server.poll(50) for _ in iter(lambda: stop.is_set(), True)])
    loop.start()
    yield server, backend
    backend.release.set()
    stop.set()
    loop.join()
    server.close()


def req(endpoint: str, header: dict, timeout_ms: int = 10000) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    s.send_multipart([json.dumps(header).encode()])
    return s


def reply(sock: zmq.Socket, timeout_ms: int = 10000) -> dict:
    assert sock.poll(timeout_ms), "no reply"
    header = json.loads(sock.recv_multipart()[0])
    sock.close()
    return header


def test_exception_in_synthesis_is_an_internal_error_reply(served):
    server, backend = served
    h = reply(req(server.endpoint, {"op": "synthesize", "id": 1, "text": "raise"}))
    assert h["ok"] is False and h["error"]["code"] == "internal" and "engine fell over" in h["error"]["message"]
    assert reply(req(server.endpoint, {"op": "ping"}))["ok"]


def test_exception_in_control_op_is_an_internal_error_reply(served):
    server, _ = served
    h = reply(req(server.endpoint, {"op": "status", "explode": True}))
    assert h["error"]["code"] == "internal"
    assert reply(req(server.endpoint, {"op": "status"}))["ok"]


def test_out_of_memory_keeps_its_code(served):
    server, _ = served
    h = reply(req(server.endpoint, {"op": "synthesize", "text": "oom"}))
    assert h["error"]["code"] == "out_of_memory"


def test_busy_when_the_queue_is_full_and_control_ops_still_answer(served):
    server, backend = served
    running = req(server.endpoint, {"op": "synthesize", "id": "run", "text": "one"})
    assert backend.started.wait(10)
    queued = req(server.endpoint, {"op": "synthesize", "id": "queued", "text": "two"})
    deadline = time.monotonic() + 10
    while server.pending < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    refused = reply(req(server.endpoint, {"op": "synthesize", "id": "third", "text": "three"}))
    assert refused["error"]["code"] == "busy" and refused["id"] == "third"
    assert reply(req(server.endpoint, {"op": "health"}))["state"] == "ready"
    backend.release.set()
    assert reply(running)["text"] == "one"
    assert reply(queued)["text"] == "two"


def test_not_ready_refusal_comes_from_the_backend(served):
    server, backend = served
    backend.refuse = ServiceError(ErrorCode.NOT_READY, "engine is warming")
    h = reply(req(server.endpoint, {"op": "synthesize", "id": "w", "text": "hi"}))
    assert h["error"] == {"code": "not_ready", "message": "engine is warming"} and h["id"] == "w"


def test_drain_answers_queued_jobs_with_shutting_down(tmp_path):
    backend = ControlledBackend()
    server = Server(f"ipc://{tmp_path}/d.sock", backend, Limits(1 << 20, 100, 1 << 16), max_queue=2)
    server.bind()
    running = req(server.endpoint, {"op": "synthesize", "id": "a", "text": "one"})
    waiting = req(server.endpoint, {"op": "synthesize", "id": "b", "text": "two"})
    deadline = time.monotonic() + 10
    while (server.pending < 2 or not backend.started.is_set()) and time.monotonic() < deadline:
        server.poll(20)
    threading.Timer(0.3, backend.release.set).start()
    server.drain(timeout_s=10)
    assert reply(running)["ok"] is True
    h = reply(waiting)
    assert h["error"]["code"] == "shutting_down" and h["id"] == "b"
    server.close()
    assert not (tmp_path / "d.sock").exists()


@pytest.mark.parametrize(
    "bound,reach",
    [
        ("ipc:///run/x/tts.sock", "ipc:///run/x/tts.sock"),
        ("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5555"),
        ("tcp://*:5555", "tcp://127.0.0.1:5555"),
        ("tcp://0.0.0.0:5555", "tcp://127.0.0.1:5555"),
        ("tcp://[::]:5555", "tcp://[::1]:5555"),
    ],
)
def test_connect_endpoint_turns_wildcards_into_loopback(bound: str, reach: str) -> None:
    from ishowtts_edge.server import connect_endpoint

    assert connect_endpoint(bound) == reach
