"""Streamed synthesis on real sockets: the daemon's backend, the server and the demo engine in this
process, clients on DEALER and REQ sockets.

The engine's clock emulation (engine/clock.py) slows every sampling step when a test needs a
synthesis long enough to cancel or to read slowly: it sleeps ``step * (max/cur - 1)`` after
each step, read from two files the test writes.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import numpy as np
import pytest
import zmq

from req_support import req_reply, req_send
from engine_support import Slowdown, engine_settings, out_of_memory_on_call, tiny_bundle  # noqa: F401  (fixture)
from ishowtts_edge.client import Client, ClientError, ClientTimeout
from ishowtts_edge.config import VoiceConfig
from ishowtts_edge.daemon import Daemon
from ishowtts_edge.engine.loader import load_engine
from ishowtts_edge.protocol import Limits
from ishowtts_edge.server import Server

TEXT = ("Hello there, this is a streamed test. It has several sentences, each of them short! "
        "And then a longer one follows here, and the stream cuts a short first chunk off it. The end.")


@pytest.fixture(scope="module")
def served(tiny_bundle, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("stream")
    slow = Slowdown(tmp / "devfreq")
    # stream_split_min_s 0: the demo voice speaks TEXT in one upstream chunk, which a stream then
    # cuts in two (a short first chunk and the rest), so there is a chunk boundary to test at.
    settings = engine_settings(tiny_bundle, tmp, {"v": VoiceConfig(dir=tiny_bundle.voice_dir)},
                               emulate_clock_devfreq=slow.root, stream_split_min_s=0.0)
    engine = load_engine(settings)
    daemon = Daemon(settings)
    daemon.engine = engine
    daemon.service.set("ready")
    server = Server(f"ipc://{tmp}/s.sock", daemon, Limits(1 << 20, 2000, 1 << 20), max_queue=4,
                    max_queue_per_client=2, stream_window_s=10.0)
    daemon.server = server
    server.bind()
    stop = threading.Event()
    loop = threading.Thread(target=lambda: [server.poll(100) for _ in iter(stop.is_set, True)])
    loop.start()
    yield server, daemon, slow
    stop.set()
    server.close()
    loop.join(10)


@pytest.fixture
def endpoint(served):
    server, _, slow = served
    slow.set(1)
    yield server.endpoint
    slow.set(1)
    deadline = time.monotonic() + 30
    while server.pending and time.monotonic() < deadline:  # nothing left running into the next test
        time.sleep(0.02)


@pytest.fixture
def engine_calls(served):
    """The texts the engine was asked to synthesize, in order, during one test."""
    _, daemon, _ = served
    ran: list[str] = []
    real = daemon.engine.synthesize

    def recording(params, *args, **kwargs):
        ran.append(params.text)
        return real(params, *args, **kwargs)

    daemon.engine.synthesize = recording
    yield ran
    daemon.engine.synthesize = real


def wait_for(condition, within_s: float = 15) -> None:
    deadline = time.monotonic() + within_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert condition()


def pcm(chunks) -> np.ndarray:
    return np.frombuffer(b"".join(c.audio for c in chunks), dtype="<f4")


def test_streamed_audio_equals_the_whole_reply_for_the_same_seed_and_plan(endpoint):
    with Client(endpoint, timeout_s=60) as client:
        for plan in ("short_first", "upstream"):
            stream = client.stream(TEXT, "v", format="f32le", seed=3, chunk_plan=plan)
            streamed = pcm(list(stream))
            whole = client.synthesize(TEXT, "v", format="f32le", seed=3, chunk_plan=plan)
            assert stream.start["chunks"] == whole.header["chunks"] == stream.end["chunks"]
            assert np.array_equal(streamed, np.frombuffer(whole.audio, dtype="<f4")), plan
            assert stream.end["samples"] == len(streamed) and stream.end["audio_seconds"] == whole.header["audio_seconds"]
        # Without a chunk_plan a stream cuts its first chunk short, the one-reply request does not.
        default_stream = client.stream(TEXT, "v", format="f32le", seed=3)
        list(default_stream)
        assert default_stream.start["chunk_plan"] == "short_first"
        assert default_stream.start["chunks"] > client.synthesize(TEXT, "v", seed=3).header["chunks"]


def test_a_stream_is_a_start_then_numbered_audio_in_order_then_an_end(endpoint):
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send_multipart([b"", json.dumps({"v": 2, "op": "synthesize", "id": 7, "text": TEXT, "voice": "v",
                                          "stream": True, "seed": 1}).encode()])
    messages = []
    while not messages or messages[-1][0]["stream"] not in ("end", "error"):
        assert sock.poll(60_000)
        frames = sock.recv_multipart()
        messages.append((json.loads(frames[1]), frames[2:]))
    sock.close()
    kinds = [h["stream"] for h, _ in messages]
    assert kinds[0] == "start" and kinds[-1] == "end" and set(kinds[1:-1]) == {"audio"}
    assert all(h["v"] == 2 and h["id"] == 7 and h["ok"] for h, _ in messages)
    start, audio, end = messages[0][0], messages[1:-1], messages[-1][0]
    assert start["format"] == "pcm_s16le" and start["sample_rate"] == 24000 and start["chunks"] >= 2
    assert [h["seq"] for h, _ in audio] == list(range(len(audio)))
    assert [h["chunk"] for h, _ in audio] == sorted(h["chunk"] for h, _ in audio)
    assert {h["chunk"] for h, _ in audio} == set(range(start["chunks"]))
    assert all(len(frames[0]) == 2 * h["samples"] for h, frames in audio)
    assert end["messages"] == len(audio) and end["samples"] == sum(h["samples"] for h, _ in audio)
    assert end["first_audio_seconds"] <= end["server_seconds"]
    for field in ("audio_seconds", "synthesis_seconds", "rtf", "mel_frames", "nfe_step", "queue_seconds"):
        assert field in end


def test_a_version_1_request_cannot_stream_and_its_replies_stay_version_1(endpoint):
    s = zmq.Context.instance().socket(zmq.REQ)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(endpoint)
    s.send_multipart([json.dumps({"op": "synthesize", "text": "Hi there.", "stream": True}).encode()])
    assert s.poll(10_000)
    header = json.loads(s.recv_multipart()[0])
    assert header["v"] == 1 and header["error"]["code"] == "bad_request" and "version 2" in header["error"]["message"]
    s.send_multipart([json.dumps({"op": "synthesize", "text": "Hi there.", "voice": "v", "seed": 1}).encode()])
    assert s.poll(60_000)
    header = json.loads(s.recv_multipart()[0])
    s.close()
    assert header["v"] == 1 and header["ok"] and "stream" not in header


def wait_free(server: Server, within_s: float) -> float:
    started = time.monotonic()
    while server.pending and time.monotonic() - started < within_s:
        time.sleep(0.01)
    assert server.pending == 0, "the worker is still busy"
    return time.monotonic() - started


def first_audio(stream) -> None:
    it = iter(stream)
    next(it)
    return it


def test_cancel_stops_a_running_stream_and_frees_the_worker(served, endpoint):
    server, _, slow = served
    before = server.stats.cancelled["op"]
    with Client(endpoint, timeout_s=60) as client:
        stream = client.stream(TEXT, "v", seed=1)
        it = first_audio(stream)
        slow.set(200)  # from here every step takes long: a cancel not acted on would keep the worker
        stream.cancel()
        with pytest.raises(ClientError) as info:
            list(it)
        assert info.value.code == "cancelled"
        wait_free(server, 15)
        slow.set(1)
        assert client.synthesize("Quick one.", "v", seed=1).header["samples"] > 0
    assert server.stats.cancelled["op"] == before + 1


def test_a_stream_client_that_disconnects_is_cancelled_and_frees_the_worker(served, endpoint, caplog):
    """The connection's end is seen at once (the connection gate's socket monitor), not at the next send."""
    caplog.set_level(logging.INFO, logger="ishowtts_edge.server")
    server, daemon, slow = served
    before = server.stats.cancelled["disconnect"]
    records = daemon.hub  # no monitor here: nothing may be recorded from a cancelled request anyway
    assert records is None
    with Client(endpoint, timeout_s=60) as client:
        stream = client.stream(TEXT, "v", seed=1)
        first_audio(stream)
        slow.set(200)
        stream.close()  # the DEALER goes: the daemon hears the connection end
        wait_free(server, 15)
        slow.set(1)
        assert client.synthesize("Quick one.", "v", seed=1).header["samples"] > 0
    assert server.stats.cancelled["disconnect"] == before + 1
    assert any("request cancelled" in r.getMessage() and "by=disconnect" in r.getMessage()
               and "was=running" in r.getMessage() for r in caplog.records)
    assert daemon.status()["requests"]["cancelled"]["disconnect"] >= 1


def test_a_stream_abandoned_from_another_thread_is_closed_by_its_reader_and_cancelled(served, endpoint):
    """What the Wyoming bridge does when its peer leaves while a worker thread waits for audio."""
    server, _, slow = served
    before = server.stats.cancelled["disconnect"]
    with Client(endpoint, timeout_s=60) as client:
        stream = client.stream(TEXT, "v", seed=1)
        it = first_audio(stream)
        slow.set(200)
        threading.Timer(0.2, stream.abandon).start()
        with pytest.raises(ClientError) as info:
            list(it)  # waits for audio in this thread until the other one abandons the stream
        assert info.value.code == "closed"
        wait_free(server, 15)
        slow.set(1)
        assert client.synthesize("Quick one.", "v", seed=1).header["samples"] > 0
    assert server.stats.cancelled["disconnect"] == before + 1


def test_a_queued_stream_that_is_cancelled_never_runs(served, endpoint, engine_calls):
    server, daemon, slow = served
    slow.set(20)
    with Client(endpoint, timeout_s=60) as client:
        running = client.stream("First one runs.", "v", seed=1)
        while server.pending == 0:
            time.sleep(0.01)
        queued = client.stream("Second one never runs.", "v", seed=1)
        gone = client.stream("Third one leaves before it runs.", "v", seed=1)
        while server.pending < 3:
            time.sleep(0.01)
        queued.cancel()
        with pytest.raises(ClientError) as info:
            list(queued)
        assert info.value.code == "cancelled"
        gone.close()
        time.sleep(0.3)
        slow.set(1)
        assert len(list(running)) > 0
        wait_free(server, 30)
    assert engine_calls == ["First one runs."]


def test_a_one_reply_client_that_leaves_while_queued_is_never_run(served, endpoint, engine_calls):
    """A REQ client closes while its long request waits: the request is dropped, so the next
    client's request runs right after the one running, and the disconnect is counted."""
    server, _, slow = served
    before = dict(server.stats.cancelled), dict(server.stats.errors)
    slow.set(20)
    running = req_send(endpoint, {"op": "synthesize", "id": "a", "text": "First one runs.", "voice": "v", "seed": 1})
    wait_for(lambda: engine_calls == ["First one runs."])
    leaving = req_send(endpoint, {"op": "synthesize", "id": "b", "text": " ".join([TEXT] * 4), "voice": "v", "seed": 1})
    wait_for(lambda: server.pending == 2)
    leaving.close()
    wait_for(lambda: server.stats.cancelled["disconnect"] == before[0].get("disconnect", 0) + 1)
    assert server.pending == 1  # only the running one is left
    other = req_send(endpoint, {"op": "synthesize", "id": "c", "text": "Quick one.", "voice": "v", "seed": 1})
    slow.set(1)
    assert req_reply(running)["ok"] and req_reply(other)["ok"]
    wait_free(server, 30)
    assert engine_calls == ["First one runs.", "Quick one."]
    assert server.stats.errors["cancelled"] == before[1].get("cancelled", 0) + 1


def test_a_one_reply_client_that_leaves_while_its_request_runs_cancels_it(served, endpoint, engine_calls):
    server, _, slow = served
    before = server.stats.cancelled["disconnect"]
    slow.set(20)  # long enough that it still runs when the client leaves
    leaving = req_send(endpoint, {"op": "synthesize", "id": "r", "text": TEXT, "voice": "v", "seed": 1})
    wait_for(lambda: engine_calls == [TEXT])
    slow.set(200)  # from here every step takes long: only the cancellation frees the worker in time
    leaving.close()
    wait_free(server, 15)
    slow.set(1)
    assert server.stats.cancelled["disconnect"] == before + 1
    assert req_reply(req_send(endpoint, {"op": "synthesize", "id": "n", "text": "Quick one.", "voice": "v"}))["ok"]


def test_queue_seconds_is_the_same_wait_in_a_streams_start_and_end_a_one_reply_header_and_the_metrics(
        served, endpoint):
    """Requests queued behind a slow one: each reports one queue_seconds (admission to the worker
    taking it) everywhere, and it covers at least the time the test saw them waiting."""
    server, _, slow = served
    hooked: list[tuple[str, float | None]] = []
    try:
        slow.set(20)
        with Client(endpoint, timeout_s=60) as client:
            running = client.stream("First one runs.", "v", seed=1)
            # Once it runs, the worker has run the previous test's last hook: only ours are seen.
            wait_for(lambda: server.job_started is not None)
            server.on_reply = lambda op, code, seconds, queue_seconds, first_audio: hooked.append((code, queue_seconds))
            streamed = client.stream("Second one waits.", "v", seed=1)
            wait_for(lambda: server.pending == 2)
            one_reply = req_send(endpoint, {"op": "synthesize", "text": "Third one waits too.", "voice": "v"})
            wait_for(lambda: server.pending == 3)
            queued_by = seen_waiting = time.monotonic()
            while True:  # three pending: the first still runs, the other two wait
                now = time.monotonic()
                if server.pending < 3:
                    break
                seen_waiting = now
                time.sleep(0.005)
            waited = seen_waiting - queued_by
            slow.set(1)
            list(running)
            list(streamed)
            header = req_reply(one_reply)
        wait_for(lambda: len(hooked) == 3)  # the hook runs just after each reply left
    finally:
        server.on_reply = None
    assert waited > 0
    assert streamed.start["queue_seconds"] == streamed.end["queue_seconds"] >= waited - 1e-6
    assert header["ok"] and header["queue_seconds"] >= waited - 1e-6
    assert [code for code, _ in hooked] == ["ok"] * 3
    assert [round(q, 6) for _, q in hooked[1:]] == [streamed.end["queue_seconds"], header["queue_seconds"]]


def test_status_and_another_clients_request_are_answered_during_a_stream(served, endpoint):
    server, _, slow = served
    slow.set(10)
    with Client(endpoint, timeout_s=60) as streamer, Client(endpoint, timeout_s=60) as other, \
            Client(endpoint, timeout_s=60) as third:
        stream = streamer.stream(TEXT, "v", seed=2)
        got, statuses = [], 0
        result: dict = {}
        second = threading.Thread(target=lambda: result.update(r=third.synthesize("Another client.", "v", seed=2)))
        for i, chunk in enumerate(stream):
            got.append(chunk)
            assert other.status(timeout_s=5)["state"] == "ready"  # at once, between chunks
            statuses += 1
            if i == 0:
                second.start()
        second.join(60)
        assert stream.end is not None and statuses == len(got) > 1
        assert result["r"].header["samples"] > 0


def test_a_slow_reader_gets_the_whole_stream_and_the_monitor_sees_only_engine_time(served, endpoint):
    server, daemon, _ = served
    completed: list = []
    real = daemon.completed
    daemon.completed = lambda request, result: (completed.append(result), real(request, result))
    try:
        with Client(endpoint, timeout_s=60) as client:
            stream = client.stream(TEXT, "v", format="f32le", seed=4)
            chunks = []
            for chunk in stream:
                chunks.append(chunk)
                time.sleep(0.3)  # a reader far slower than the engine
            whole = client.synthesize(TEXT, "v", format="f32le", seed=4, chunk_plan="short_first")
    finally:
        daemon.completed = real
    assert np.array_equal(pcm(chunks), np.frombuffer(whole.audio, dtype="<f4"))
    streamed_result = completed[0]
    # The reader took 0.3 s per message; the engine time the RTF monitor gets does not include it.
    assert streamed_result.synthesis_seconds < 0.3 * (len(chunks) - 1)


def test_a_client_that_stops_reading_ends_its_stream_with_slow_reader(served, endpoint):
    """No acks and no reads: past the window (10 s of audio here) the stream ends, the daemon keeps nothing more."""
    server, _, _ = served
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    long_text = " ".join(["This sentence is here to make the stream long enough."] * 12)
    sock.send_multipart([b"", json.dumps({"v": 2, "op": "synthesize", "id": "s", "text": long_text, "voice": "v",
                                          "stream": True, "seed": 1, "speed": 0.5}).encode()])
    assert sock.poll(30_000)  # the start message: the request is in (before it, the worker looks free)
    last = json.loads(sock.recv_multipart()[1])
    assert last["stream"] == "start"
    wait_free(server, 120)
    while sock.poll(1000):
        last = json.loads(sock.recv_multipart()[1])
    sock.close()
    assert last["stream"] == "error" and last["error"]["code"] == "slow_reader"
    assert server.stats.cancelled["slow_reader"] >= 1


def test_an_out_of_memory_on_the_second_chunk_ends_the_stream_with_an_error_and_the_daemon_serves_on(
        served, endpoint, monkeypatch, caplog):
    _, daemon, _ = served
    sampler = daemon.engine.sampler
    real = sampler.sample
    monkeypatch.setattr(sampler, "sample", out_of_memory_on_call(real, 2))
    with Client(endpoint, timeout_s=60) as client:
        stream = client.stream(TEXT, "v", seed=1)
        got = []
        with pytest.raises(ClientError) as info:
            for chunk in stream:
                got.append(chunk)
        assert info.value.code == "out_of_memory" and info.value.header["stream"] == "error"
        assert got and {c.chunk for c in got} == {0}  # the first chunk's final audio came through
        monkeypatch.setattr(sampler, "sample", real)
        assert client.synthesize("Still serving.", "v", seed=1).header["samples"] > 0
        assert daemon.health()["state"] == "ready"  # the success disproved the OOM
    # The daemon's trouble is a warning in the journal; a client that left (above: "the client
    # disconnected" in other tests) or a text too long is not.
    failed = [r for r in caplog.records if r.getMessage().startswith("synthesis failed")]
    assert [r.levelno for r in failed if "code=out_of_memory" in r.getMessage()] == [logging.WARNING]


def test_a_gap_longer_than_the_timeout_is_an_error_not_a_retry(served, endpoint):
    server, _, slow = served
    before = server.stats.requests["synthesize"]
    slow.set(200)
    with Client(endpoint, timeout_s=0.5) as client:
        stream = client.stream(TEXT, "v", seed=1)
        with pytest.raises(ClientTimeout):
            list(stream)
    slow.set(1)
    wait_free(server, 30)  # the closed socket cancelled it
    assert server.stats.requests["synthesize"] == before + 1  # sent once, never again


def test_say_stream_writes_the_streamed_pcm_to_stdout_through_a_real_daemon(daemon):
    """``ishowtts-edge say --stream`` (what `| aplay -r 24000 -f S16_LE -c 1` plays) against the daemon process."""
    import subprocess
    import sys

    from ishowtts_edge.bench.daemon_process import child_env

    run = subprocess.run(
        [sys.executable, "-m", "ishowtts_edge.cli", "say", "--endpoint", daemon.endpoint, "--stream",
         "-f", "pcm_s16le", "--seed", "5", TEXT],
        capture_output=True, env=child_env({}), timeout=300, check=False)
    assert run.returncode == 0, run.stderr.decode()
    assert b"first audio after" in run.stderr
    with Client(daemon.endpoint, timeout_s=120) as client:
        whole = client.synthesize(TEXT, format="pcm_s16le", seed=5, chunk_plan="short_first")
        status = client.status()
    assert run.stdout == whole.audio and len(run.stdout) > 0
    assert status["requests"]["cancelled"] == {}


def test_time_to_first_audio_metric_observes_a_streams_first_audio_not_its_end(served, endpoint):
    from ishowtts_edge.metrics import Metrics

    server, daemon, slow = served
    metrics = Metrics(daemon)
    try:
        slow.set(5)
        with Client(endpoint, timeout_s=60) as client:
            stream = client.stream(TEXT, "v", seed=1)
            chunks = iter(stream)
            next(chunks)
            # Ours runs, so the worker has run the previous test's last hook: only ours is seen.
            server.on_reply = metrics.on_reply
            list(chunks)
        value = metrics.registry.get_sample_value
        deadline = time.monotonic() + 10  # the hook runs just after the end message left
        while not value("ishowtts_time_to_first_audio_seconds_count") and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        server.on_reply = None
    assert value("ishowtts_time_to_first_audio_seconds_count") == 1
    first, whole = value("ishowtts_time_to_first_audio_seconds_sum"), value("ishowtts_request_duration_seconds_sum")
    assert first == pytest.approx(stream.end["first_audio_seconds"], abs=0.01) and first < whole


def test_cross_fading_chunk_by_chunk_gives_upstreams_cross_fade_exactly():
    from ishowtts_edge.engine.text import CrossFader, cross_fade

    rng = np.random.default_rng(0)
    for trial in range(200):
        waves = [rng.standard_normal(int(rng.integers(1 if i == 0 else 0, 9000))).astype(np.float32)
                 for i in range(int(rng.integers(1, 6)))]
        seconds = float(rng.choice([0.0, 0.01, 0.15, 0.3]))
        fader = CrossFader(seconds, 24000)
        pieces = [fader.push(w) for w in waves] + [fader.finish()]
        # Only the fade is held back: everything before the last chunk's tail was handed out.
        assert len(pieces[-1]) <= int(seconds * 24000)
        assert np.array_equal(np.concatenate(pieces), cross_fade(waves, seconds, 24000)), trial


def test_version_2_fields_and_ops_are_refused_in_version_1_and_checked_in_version_2():
    from ishowtts_edge.protocol import ErrorCode, ServiceError, parse_request

    limits = Limits(1 << 20, 2000, 1 << 20)

    def code(header: dict) -> str | None:
        try:
            parse_request([json.dumps(header).encode()], limits)
        except ServiceError as exc:
            return exc.code.value
        return None

    assert code({"op": "cancel", "request": "x"}) == ErrorCode.UNKNOWN_OP.value
    assert code({"v": 2, "op": "cancel", "request": "x"}) is None
    assert code({"v": 2, "op": "cancel"}) == "bad_request"
    assert code({"v": 2, "op": "ack", "request": "x", "seq": -1}) == "bad_request"
    assert code({"v": 2, "op": "ack", "request": "x", "seq": 3, "extra": 1}) == "bad_request"
    assert code({"v": 2, "op": "synthesize", "text": "Hi.", "stream": True, "format": "wav"}) == "bad_request"
    assert code({"v": 3, "op": "ping"}) == "unsupported_version"
    request = parse_request([b'{"v": 2, "op": "synthesize", "text": "Hi.", "stream": true}'], limits)
    assert request.params.format == "pcm_s16le" and request.version == 2
