"""End to end: the real daemon process, the demo model on CPU, real ipc sockets."""

from __future__ import annotations

import io
import json
import re
import threading
import time

import numpy as np
import pytest
import soundfile as sf
import zmq

from ishowtts_edge.client import Client, ClientError


def raw_request(endpoint: str, frames: list[bytes], timeout_ms: int = 30000) -> tuple[dict, list[bytes]]:
    """One request on a fresh raw REQ socket; returns the decoded reply header and extra frames."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart(frames)
        assert sock.poll(timeout_ms), "no reply"
        reply = sock.recv_multipart()
    finally:
        sock.close()
    return json.loads(reply[0]), reply[1:]


def test_synthesize_wav_with_client(daemon):
    with Client(daemon.endpoint, timeout_s=120) as client:
        out = client.synthesize("Hello from the edge.", seed=3)
    audio, sr = sf.read(io.BytesIO(out.audio), dtype="float32")
    h = out.header
    assert sr == h["sample_rate"] == 24000
    assert audio.ndim == 1 and len(audio) == h["samples"]
    assert h["audio_seconds"] == pytest.approx(len(audio) / sr, abs=1e-5)
    assert h["audio_seconds"] > 0.3
    assert h["rtf"] == pytest.approx(h["synthesis_seconds"] / h["audio_seconds"], rel=1e-3)
    assert h["voice"] == "demo" and h["nfe_step"] == 7
    assert np.isfinite(audio).all() and np.abs(audio).max() <= 1.0


def test_raw_req_socket_pcm_and_float(daemon):
    base = {"v": 1, "op": "synthesize", "text": "Raw socket.", "seed": 5}
    header16, frames16 = raw_request(daemon.endpoint, [json.dumps({**base, "id": "a", "format": "pcm_s16le"}).encode()])
    header32, frames32 = raw_request(daemon.endpoint, [json.dumps({**base, "id": "b", "format": "f32le"}).encode()])
    assert header16["ok"] and header16["id"] == "a" and header16["format"] == "pcm_s16le"
    assert len(frames16) == 1 and len(frames16[0]) == 2 * header16["samples"]
    assert len(frames32[0]) == 4 * header32["samples"]
    # Same seed, same text: the two encodings carry the same waveform.
    pcm = np.frombuffer(frames16[0], "<i2").astype(np.float32) / 32767
    f32 = np.frombuffer(frames32[0], "<f4")
    assert header16["samples"] == header32["samples"]
    assert np.max(np.abs(pcm - np.clip(f32, -1, 1))) < 2e-4


MALFORMED = [
    ("not json", [b"hello"], "bad_request"),
    ("invalid utf-8", [b'{"op": "ping", "x": "\xff\xfe"}'], "bad_request"),
    ("json array", [b"[1, 2]"], "bad_request"),
    ("missing op", [b'{"v": 1, "id": "x"}'], "bad_request"),
    ("unknown op", [b'{"op": "sing"}'], "unknown_op"),
    ("wrong version", [b'{"v": 9, "op": "ping"}'], "unsupported_version"),
    ("missing text", [b'{"op": "synthesize"}'], "bad_request"),
    ("text wrong type", [b'{"op": "synthesize", "text": 12}'], "bad_request"),
    ("nfe wrong type", [b'{"op": "synthesize", "text": "hi", "nfe_step": "7"}'], "bad_request"),
    ("nfe out of bounds", [b'{"op": "synthesize", "text": "hi", "nfe_step": 1000}'], "bad_request"),
    ("unknown field", [b'{"op": "synthesize", "text": "hi", "colour": "blue"}'], "bad_request"),
    ("bad format", [b'{"op": "synthesize", "text": "hi", "format": "mp3"}'], "bad_request"),
    ("blank text", [b'{"op": "synthesize", "text": "   "}'], "bad_request"),
    ("only invisible characters", [b'{"op": "synthesize", "text": "\\u0000\\u200b\\ufeff "}'], "bad_request"),
    ("too many frames", [b'{"op": "synthesize", "text": "hi", "ref_text": "x"}', b"a", b"b"], "bad_request"),
    ("frame for ping", [b'{"op": "ping"}', b"extra"], "bad_request"),
    ("ref_text without audio", [b'{"op": "synthesize", "text": "hi", "ref_text": "x"}'], "bad_request"),
    ("audio without ref_text", [b'{"op": "synthesize", "text": "hi"}', b"RIFF...."], "bad_request"),
    ("undecodable reference", [b'{"op": "synthesize", "text": "hi", "ref_text": "hello"}', b"not audio at all"], "bad_reference"),
    ("text too long", [json.dumps({"op": "synthesize", "text": "a" * 2001}).encode()], "text_too_long"),
    ("unknown voice", [b'{"op": "synthesize", "text": "hi", "voice": "nobody"}'], "unknown_voice"),
    ("oversized message", [b'{"op": "synthesize", "text": "hi", "ref_text": "x"}', b"\0" * (17 * 1024 * 1024)], "too_large"),
    ("empty frame 0", [b""], "bad_request"),
    # JSON allows escapes that are not Unicode text: the reply (which echoes the id) and the
    # log line could not be encoded, and the reader thread died with them.
    ("lone surrogate id", [b'{"op": "ping", "id": "\\ud800"}'], "bad_request"),
    ("lone surrogate text", [b'{"op": "synthesize", "id": "s", "text": "hi \\udfff"}'], "bad_request"),
    ("integer of 5000 digits", [b'{"op": "synthesize", "text": "hi", "seed": 1' + b"0" * 5000 + b"}"], "bad_request"),
    ("nesting deeper than the stack", [b'{"op": "ping", "x": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"], "bad_request"),
]


@pytest.mark.parametrize("frames,code", [(f, c) for _, f, c in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_malformed_requests_get_one_error_reply_and_daemon_keeps_serving(daemon, frames, code):
    header, extra = raw_request(daemon.endpoint, frames)
    assert header["ok"] is False
    assert header["error"]["code"] == code, header
    assert header["error"]["message"]
    assert extra == []
    with Client(daemon.endpoint, timeout_s=10) as client:
        assert client.ping()["pong"] is True


def test_an_unknown_voice_is_refused_before_it_takes_a_place_in_the_queue(daemon):
    header, _ = raw_request(daemon.endpoint, [b'{"op": "synthesize", "id": "uv", "text": "hi", "voice": "nobody"}'])
    assert header["error"]["code"] == "unknown_voice"
    # Refused by the front end ("request refused"), never run by the worker ("synthesis failed").
    deadline = time.monotonic() + 10
    while "id=uv" not in daemon.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [line for line in daemon.log().splitlines() if "id=uv" in line]
    assert lines and all("request refused" in line for line in lines), lines


def test_a_text_whose_spoken_form_is_too_long_is_refused_before_any_work(daemon):
    """2000 characters of amounts say 16,750: refused at once, not minutes of synthesis."""
    text = ("$999,999,999.99 " * 125)[:2000]
    with Client(daemon.endpoint, timeout_s=60, retries=0) as client:
        with pytest.raises(ClientError) as refused:
            client.synthesize(text, seed=1)
        assert refused.value.code == "text_too_long" and "written out" in refused.value.message
        assert client.synthesize("It costs $19.99.", seed=1, nfe_step=2)  # the same money, short: spoken
    # The client's text, not the daemon's trouble: info, not a warning in `journalctl -p warning`.
    lines = [line for line in daemon.log().splitlines() if "synthesis failed" in line and "code=text_too_long" in line]
    assert lines and all(line.startswith("<6>") for line in lines), lines


def test_error_reply_echoes_request_id(daemon):
    header, _ = raw_request(daemon.endpoint, [b'{"op": "synthesize", "id": "req-77", "text": 3}'])
    assert header["id"] == "req-77" and header["op"] == "synthesize"


FORGERIES = [
    # (request header, the escaped value the journal must show instead of a line of its own)
    ({"op": "pi\n<2>daemon: forged op", "id": "a\n<3>server: forged id"}, 'id="a\\n<3>server: forged id"'),
    ({"op": "synthesize", "id": "b\r\n<3>server: forged crlf", "text": "Hi.", "voice": "v\n<3>server: forged voice"},
     "b\\r\\n<3>server: forged crlf"),
    ({"op": "synthesize", "id": "c\u2028<3>server: forged separator", "text": 3}, "c\\u2028<3>server: forged separator"),
    ({"op": "synthesize", "id": "d", "text": "Hi.", "ref_text": "e\n<3>server: forged ref_text"}, None),
]


def test_nothing_a_peer_sends_can_forge_a_journal_line(daemon):
    for header, _ in FORGERIES:
        reply, _ = raw_request(daemon.endpoint, [json.dumps(header).encode()])
        assert reply["ok"] is False
    with Client(daemon.endpoint, timeout_s=10) as client:
        assert client.ping()["pong"] is True
    log = daemon.log()
    for line in log.split("\n"):  # journald splits on newlines only
        if "forged" in line:
            # Only ever inside the first line of the record that carried it, never a line of its own.
            assert re.match(r"<[0-7]>server: (request refused|synthesis failed) ", line), line
    for _, escaped in FORGERIES:
        if escaped:
            assert escaped in log


RUN_ON = {
    "en": " ".join(["the quick brown fox jumps over the lazy dog and keeps on running"] * 16),  # ~1000 chars
    "zh": "我们今天一起去公园散步然后回家吃饭再看一会儿书" * 40,  # 920 characters, no break
}


@pytest.mark.parametrize("speed", [0.3, 1.0])
@pytest.mark.parametrize("language", ["en", "zh"])
def test_run_on_text_without_sentence_breaks_is_split_and_spoken(daemon, language, speed):
    text = RUN_ON[language]
    assert not any(mark in text for mark in ".,;:!?。，；：！？")
    with Client(daemon.endpoint, timeout_s=600) as client:
        result = client.synthesize(text, speed=speed, seed=1, nfe_step=1, format="f32le")
    header = result.header
    assert header["chunks"] > 1
    assert header["samples"] == len(result.audio) // 4 > 0


def test_status_answers_while_a_synthesis_runs(daemon):
    long_text = " ".join(["This sentence keeps the engine busy for a while."] * 6)
    done = threading.Event()
    order: list[str] = []
    result: dict = {}

    def synth() -> None:
        with Client(daemon.endpoint, timeout_s=300) as c:
            result["out"] = c.synthesize(long_text, seed=1)
        order.append("synthesize")
        done.set()

    worker = threading.Thread(target=synth)
    worker.start()
    with Client(daemon.endpoint, timeout_s=10) as client:
        # Wait until the daemon reports the job as running, then ask for status.
        for _ in range(500):
            status = client.status()
            if status["queue"]["pending"] >= 1:
                break
        assert status["queue"]["pending"] >= 1, "synthesis never started"
        health = client.health()
        order.append("status")
    assert not done.is_set(), "status should have answered before the long synthesis finished"
    worker.join(300)
    assert order == ["status", "synthesize"]
    assert health["ready"] is True
    assert result["out"].header["chunks"] >= 1


def test_voices_lists_the_demo_voice(daemon):
    with Client(daemon.endpoint, timeout_s=10) as client:
        voices = client.voices()
    ids = [v["id"] for v in voices]
    assert "demo" in ids


def test_status_reports_engine_and_counts(daemon):
    with Client(daemon.endpoint, timeout_s=10) as client:
        before = client.status()["requests"]
        client.ping()
        raw_request(daemon.endpoint, [b'{"op": "synthesize", "text": 3}'])
        status = client.status()
    assert status["state"] in ("ready", "degraded")
    assert status["engine"]["device"] == "cpu"
    assert status["engine"]["demo"] is True
    after = status["requests"]
    assert after["requests"].get("ping", 0) == before["requests"].get("ping", 0) + 1
    assert after["errors"].get("bad_request", 0) == before["errors"].get("bad_request", 0) + 1


def test_adhoc_reference_voice(daemon):
    sr = 24000
    t = np.arange(int(sr * 2.5)) / sr
    ref = (0.2 * np.sin(2 * np.pi * 180 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, ref, sr, format="WAV")
    with Client(daemon.endpoint, timeout_s=120) as client:
        out = client.synthesize("Cloned voice.", ref_audio=buf.getvalue(), ref_text="A short reference.", seed=2)
    assert out.header["voice"] is None
    assert out.header["samples"] > 0


def test_cli_say_and_status(daemon, tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    env = daemon.env
    wav = tmp_path / "out.wav"
    say = subprocess.run(
        [sys.executable, "-m", "ishowtts_edge.cli", "--endpoint", daemon.endpoint, "say", "Command line.", "-o", str(wav)],
        env=env, capture_output=True, text=True, timeout=300, cwd=REPO,
    )
    assert say.returncode == 0, say.stderr
    audio, sr = sf.read(wav)
    assert sr == 24000 and len(audio) > 0
    st = subprocess.run(
        [sys.executable, "-m", "ishowtts_edge.cli", "--endpoint", daemon.endpoint, "status", "--json"],
        env=env, capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert st.returncode == 0, st.stderr
    assert json.loads(st.stdout)["state"] in ("ready", "degraded")
    human = subprocess.run(
        [sys.executable, "-m", "ishowtts_edge.cli", "--endpoint", daemon.endpoint, "status"],
        env=env, capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert "state:" in human.stdout and "engine:" in human.stdout


def test_voices_command_lists_an_unavailable_voice_with_its_reason(tmp_path, demo_cache):
    """The operator runs `voices` exactly when a voice is broken: it must not crash then."""
    import subprocess
    import sys

    from conftest import REPO, DaemonProcess

    config = tmp_path / "edge.toml"
    config.write_text(f'[hardware]\nenabled = false\n\n[voices.ghost]\ndir = "{tmp_path / "gone"}"\n')
    proc = DaemonProcess(tmp_path, demo_cache, config=config)
    try:
        proc.wait_ready()
        listed = subprocess.run(
            [sys.executable, "-m", "ishowtts_edge.cli", "voices", "--endpoint", proc.endpoint],  # options after the command too
            env=proc.env, capture_output=True, text=True, timeout=60, cwd=REPO,
        )
    finally:
        proc.stop()
    assert listed.returncode == 0, listed.stderr
    lines = {line.split()[0]: line for line in listed.stdout.splitlines()}
    assert "UNAVAILABLE: " in lines["ghost"] and "    - s" in lines["ghost"]
    assert "UNAVAILABLE" not in lines["demo"] and " s  " in lines["demo"]


def test_status_when_daemon_is_not_running(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    r = subprocess.run(
        [sys.executable, "-m", "ishowtts_edge.cli", "--endpoint", f"ipc://{tmp_path}/none.sock", "--timeout", "0.5", "status"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert r.returncode == 3
    assert "not reachable" in r.stdout


def test_client_lazy_pirate_gives_up_after_bounded_retries(tmp_path):
    endpoint = f"ipc://{tmp_path}/silent.sock"
    ctx = zmq.Context.instance()
    silent = ctx.socket(zmq.ROUTER)  # accepts requests, never answers
    silent.bind(endpoint)
    try:
        client = Client(endpoint, timeout_s=0.3, retries=2)
        with pytest.raises(ClientError) as err:
            client.ping()
        assert err.value.code == "timeout"
        received = 0
        while silent.poll(200):
            silent.recv_multipart()
            received += 1
        assert received == 3  # first try + two retries, each on a fresh socket
        # A synthesis is not retried: a slow one would run again on the GPU behind itself.
        with pytest.raises(ClientError) as err:
            client.synthesize("Only once.")
        assert err.value.code == "timeout"
        ops = []
        while silent.poll(200):
            ops.append(json.loads(silent.recv_multipart()[2])["op"])
        assert ops == ["synthesize"]
        client.close()
    finally:
        silent.close(linger=0)


def test_telemetry_samples_only_after_the_warm_up(tmp_path, demo_cache):
    """Sampling during torch.compile's autotuning made the daemon's kernels slower (docs/benchmarks.md):
    the sampler starts once the warm-up is over, and status says so until then."""
    import time

    from fakes.board import FakeBoard

    from conftest import DaemonProcess

    board = FakeBoard(tmp_path / "world")
    config = tmp_path / "edge.toml"
    config.write_text(
        f'[hardware]\nenabled = false\n\n[telemetry]\nsources = ["sysfs"]\nsysfs_root = "{board.sysfs_root}"\n'
        "interval_s = 0.1\n"
    )
    proc = DaemonProcess(tmp_path, demo_cache, config=config)
    seen_before_ready = []
    try:
        with Client(proc.endpoint, timeout_s=2.0, retries=0) as client:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                assert proc.proc.poll() is None, proc.log()
                try:
                    status = client.status()
                except ClientError:
                    time.sleep(0.05)
                    continue
                if status["state"] not in ("starting", "loading", "warming"):
                    break
                if status["warmup"] is None:  # set when the warm-up ends, just before sampling starts
                    seen_before_ready.append(status["telemetry"])
                time.sleep(0.05)
            assert seen_before_ready, "no status answered before the warm-up ended"
            assert all(t == {"available": False, "source": None, "summary": "starts when the warm-up ends",
                             "samples": 0} for t in seen_before_ready), seen_before_ready
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not client.status()["telemetry"]["samples"]:
                time.sleep(0.1)
            telemetry = client.status()["telemetry"]
            assert telemetry["source"] == "sysfs" and telemetry["samples"] > 0
        log = proc.log()
        # the source is opened after the warm-up and before READY, not during the first requests
        assert (log.index("warm-up done") < log.index("telemetry source") < log.index("telemetry sampling started")
                < log.index("READY"))
    finally:
        proc.stop()
