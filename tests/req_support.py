"""A one-reply client on a bare REQ socket, for tests that drive the server below the Client."""

from __future__ import annotations

import json

import zmq


def req_send(endpoint: str, header: dict) -> zmq.Socket:
    """A REQ socket that sent ``header`` and closes at once when closed (linger 0), as the Client's does."""
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send_multipart([json.dumps(header).encode()])
    return sock


def req_reply(sock: zmq.Socket, timeout_ms: int = 60_000) -> dict:
    """The reply's header; the socket is closed."""
    assert sock.poll(timeout_ms), "no reply"
    header = json.loads(sock.recv_multipart()[0])
    sock.close()
    return header
