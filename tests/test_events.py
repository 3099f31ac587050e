"""EventPublisher on real ZeroMQ sockets (ipc in a temp dir, tcp on loopback)."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest
import zmq

from ishowtts_edge.config import MonitorConfig
from ishowtts_edge.events import EventPublisher, EventPublisherError
from ishowtts_edge.monitor.hub import MonitorHub
from monitor_sim import BoardState, FakeClock, Simulator


@pytest.fixture
def ctx():
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def subscriber(ctx, endpoint, prefixes=("",)):
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for prefix in prefixes:
        sub.setsockopt_string(zmq.SUBSCRIBE, prefix)
    sub.connect(endpoint)
    return sub


def receive(sub, timeout_s=2.0):
    if not sub.poll(int(timeout_s * 1000)):
        return None
    topic, body = sub.recv_multipart()
    return topic.decode(), json.loads(body)


def handshake(pub, sub, deadline_s=5.0):
    """Slow joiner: publish a probe until the subscriber sees one (bounded)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        pub.publish("state", {"probe": True})
        if sub.poll(50):
            sub.recv_multipart()
            while sub.poll(50):  # drain probes already in flight
                sub.recv_multipart()
            return
    raise AssertionError("subscriber never joined")


def test_publish_multipart_topic_and_json_envelope(tmp_path, ctx):
    path = tmp_path / "run" / "ishowtts-edge" / "events.sock"  # directory does not exist yet
    with EventPublisher(f"ipc://{path}", context=ctx) as pub:
        assert path.is_socket()
        assert oct(path.stat().st_mode & 0o777) == "0o660"
        sub = subscriber(ctx, pub.endpoint)
        handshake(pub, sub)
        assert pub.publish("alert.raised", {"id": "clock_drift-1", "slowdown": 0.42, "bad": float("nan")})
        topic, msg = receive(sub)
        assert topic == "alert.raised"
        assert msg["v"] == 1 and msg["topic"] == "alert.raised"
        assert msg["data"] == {"id": "clock_drift-1", "slowdown": 0.42, "bad": None}
        assert isinstance(msg["seq"], int) and abs(msg["time"] - time.time()) < 60
        sub.close()


def test_subscribers_filter_by_topic_prefix(tmp_path, ctx):
    with EventPublisher(f"ipc://{tmp_path}/ev.sock", context=ctx) as pub:
        probe = subscriber(ctx, pub.endpoint)
        alerts = subscriber(ctx, pub.endpoint, prefixes=("alert.",))
        handshake(pub, probe)
        # alerts joined at the same time as probe; make sure it is connected too.
        end = time.monotonic() + 5
        while time.monotonic() < end:
            pub.publish("alert.raised", {"n": 0})
            if alerts.poll(50):
                alerts.recv_multipart()
                break
        while alerts.poll(50):
            alerts.recv_multipart()
        pub.publish("state", {"n": 1})
        pub.publish("remediation", {"n": 2})
        pub.publish("alert.cleared", {"n": 3})
        topic, msg = receive(alerts)
        assert (topic, msg["data"]) == ("alert.cleared", {"n": 3})
        assert receive(alerts, 0.2) is None
        probe.close()
        alerts.close()


def test_stale_ipc_file_from_a_crashed_daemon_is_replaced(tmp_path, ctx):
    path = tmp_path / "events.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # the file stays, nobody listens
    assert path.is_socket()
    with EventPublisher(f"ipc://{path}", context=ctx) as pub:
        sub = subscriber(ctx, pub.endpoint)
        handshake(pub, sub)
        sub.close()


def test_live_endpoint_of_another_daemon_is_refused_and_left_alone(tmp_path, ctx):
    path = tmp_path / "events.sock"
    with EventPublisher(f"ipc://{path}", context=ctx) as first:
        with pytest.raises(EventPublisherError, match="in use by another process"):
            EventPublisher(f"ipc://{path}", context=ctx)
        # The first daemon still works.
        sub = subscriber(ctx, first.endpoint)
        handshake(first, sub)
        sub.close()


def test_regular_file_in_the_way_is_refused_not_deleted(tmp_path, ctx):
    path = tmp_path / "events.sock"
    path.write_text("precious")
    with pytest.raises(EventPublisherError, match="exists and is not a socket"):
        EventPublisher(f"ipc://{path}", context=ctx)
    assert path.read_text() == "precious"


@pytest.mark.parametrize("endpoint, message", [("ipc://", "empty ipc path"), ("udp://x", "must start with")])
def test_bad_endpoints_are_clear_errors(endpoint, message, ctx):
    with pytest.raises(EventPublisherError, match=message):
        EventPublisher(endpoint, context=ctx)


def test_close_unlinks_ipc_file_and_later_publishes_are_dropped(tmp_path, ctx):
    path = tmp_path / "events.sock"
    pub = EventPublisher(f"ipc://{path}", context=ctx)
    pub.close()
    assert not path.exists()
    assert pub.publish("state", {}) is False
    pub.close()  # twice is fine


def test_close_leaves_a_newer_daemons_socket(tmp_path, ctx):
    path = tmp_path / "events.sock"
    old = EventPublisher(f"ipc://{path}", context=ctx)
    path.unlink()  # e.g. an operator removed it, and a new daemon bound the path
    new = EventPublisher(f"ipc://{path}", context=ctx)
    old.close()
    assert path.is_socket()
    new.close()
    assert not path.exists()


def test_bad_topic_or_payload_raise(tmp_path, ctx):
    with EventPublisher(f"ipc://{tmp_path}/e.sock", context=ctx) as pub:
        for topic in ("", "alert raised", "alerté"):
            with pytest.raises(ValueError, match="event topic"):
                pub.publish(topic, {})
        with pytest.raises(TypeError, match="expected a dict"):
            pub.publish("state", ["not", "a", "dict"])


def test_tcp_loopback_wildcard_port(ctx):
    with EventPublisher("tcp://127.0.0.1:*", context=ctx) as pub:
        assert pub.endpoint.startswith("tcp://127.0.0.1:") and not pub.endpoint.endswith("*")
        sub = subscriber(ctx, pub.endpoint)
        handshake(pub, sub)
        sub.close()


def test_concurrent_publishers_send_every_message_intact(tmp_path, ctx):
    with EventPublisher(f"ipc://{tmp_path}/e.sock", context=ctx, sndhwm=10_000) as pub:
        sub = subscriber(ctx, pub.endpoint)
        sub.setsockopt(zmq.RCVHWM, 10_000)
        handshake(pub, sub)
        threads, per_thread = 4, 200

        def send(t):
            for i in range(per_thread):
                assert pub.publish("alert.updated", {"thread": t, "i": i})

        workers = [threading.Thread(target=send, args=(t,)) for t in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        got = []
        while len(got) < threads * per_thread:
            item = receive(sub, 5.0)
            assert item is not None, f"only {len(got)} messages arrived"
            got.append(item)
        seqs = [m["seq"] for _, m in got]
        assert len(set(seqs)) == len(seqs)
        for t in range(threads):  # per-thread order is kept
            assert [m["data"]["i"] for _, m in got if m["data"]["thread"] == t] == list(range(per_thread))
        sub.close()


def test_hub_publishes_alert_state_and_remediation_events(tmp_path, ctx):
    """The whole path: a clock drop, remediation that fixes it, recovery, over a real socket."""
    clock = FakeClock()
    sim = Simulator(21, clock)
    board = {"state": BoardState()}

    def apply():  # hwctl re-locks clocks
        board["state"] = BoardState()
        return {"ok": True}

    with EventPublisher(f"ipc://{tmp_path}/events.sock", context=ctx, sndhwm=10_000) as pub:
        sub = subscriber(ctx, pub.endpoint)
        handshake(pub, sub)
        hub = MonitorHub(MonitorConfig(), publisher=pub, apply_fn=apply, clock=clock, wall_clock=sim.wall,
                         background_remediation=False)
        for _ in range(60):
            hub.on_record(sim.one(board["state"]))
        board["state"] = BoardState(gpu_cur_mhz=800.0)
        for _ in range(40):
            rec = sim.one(board["state"])
            hub.on_telemetry(rec.telemetry)
            hub.on_record(rec)
        got = []
        while (item := receive(sub, 0.5)) is not None:
            got.append(item)
        topics = [t for t, _ in got]
        assert topics.count("alert.raised") == 1 and topics.count("alert.cleared") == 1
        raised = next(m for t, m in got if t == "alert.raised")["data"]
        assert raised["alert"]["cause"] == "clock_drift" and raised["alert"]["severity"] == "error"
        outcomes = [m["data"]["outcome"] for t, m in got if t == "remediation"]
        assert outcomes == ["applying", "applied", "clocks_restored", "recovered"]
        states = [m["data"] for t, m in got if t == "state"]
        assert states and states[-1]["active_alerts"] == [] and states[-1]["status_line"].startswith("RTF ")
        assert any(s["active_alerts"] for s in states)
        sub.close()
