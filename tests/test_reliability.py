"""Reliability from outside: a real daemon (demo model, CPU) over real ZeroMQ sockets.

A seeded fuzz of the wire protocol (tests/wire_fuzz.py), concurrent clients that must each
get exactly their own replies, and stop/restart faults: SIGTERM with work queued and
running, SIGKILL then restart, the Lazy Pirate client across a restart.  docs/reliability.md
says how to run it and holds its figures.

ISHOWTTS_EDGE_FUZZ_SEED and ISHOWTTS_EDGE_FUZZ_COUNT change the fuzz; with
ISHOWTTS_EDGE_FUZZ_REPORT=path its figures are also written there as JSON.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import zmq
from wire_fuzz import Fuzzer, generate

from conftest import REPO, DaemonProcess
from ishowtts_edge.client import Client, ClientError
from ishowtts_edge.protocol import ErrorCode, Limits

FUZZ_SEED = int(os.environ.get("ISHOWTTS_EDGE_FUZZ_SEED", "20817"))
FUZZ_COUNT = int(os.environ.get("ISHOWTTS_EDGE_FUZZ_COUNT", "3000"))
#: Small limits make the too_large and MAXMSGSIZE paths cheap to reach.
LIMITS = Limits(max_message_bytes=1 << 20, max_text_chars=2000, max_reference_bytes=256 << 10)
MAX_QUEUE = 4
STABLE = {c.value for c in ErrorCode} - {"internal"}


def write_config(path: Path, **server: int) -> Path:
    values = {"max_message_bytes": LIMITS.max_message_bytes, "max_text_chars": LIMITS.max_text_chars,
              "max_reference_bytes": LIMITS.max_reference_bytes, "max_queue": MAX_QUEUE, **server}
    path.write_text("[hardware]\nenabled = false\n\n[server]\n" + "".join(f"{k} = {v}\n" for k, v in values.items()))
    return path


def start(tmp: Path, cache: Path) -> DaemonProcess:
    proc = DaemonProcess(tmp, cache, config=write_config(tmp / "edge.toml"))
    proc.wait_ready()
    return proc


@pytest.fixture(scope="module")
def served(tmp_path_factory, demo_cache):
    tmp = tmp_path_factory.mktemp("reliability")
    proc = start(tmp, demo_cache)
    try:
        yield proc
    finally:
        proc.stop()


def sockets_left(proc: DaemonProcess) -> list[str]:
    return sorted(p.name for p in (proc.tmp / "run").glob("*") if p.is_socket())


def daemon_counts(endpoint: str) -> dict:
    with Client(endpoint, timeout_s=30) as c:
        return c.status()["requests"]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except OSError:
        return "unknown"


# -- 1. the fuzz ---------------------------------------------------------------------------------


def test_every_fuzzed_message_gets_exactly_one_reply_with_a_stable_code_and_the_daemon_stays_up(served):
    cases = generate(FUZZ_SEED, FUZZ_COUNT, LIMITS)
    before = daemon_counts(served.endpoint)
    tally = Fuzzer(served.endpoint, alive=lambda: served.proc.poll() is None).run(cases, FUZZ_SEED)
    tally.crashes += served.proc.poll() is not None
    figures = {**tally.figures(), "commit": git_commit(), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
               "date": time.strftime("%Y-%m-%d")}
    print("fuzz figures " + json.dumps(figures))
    if os.environ.get("ISHOWTTS_EDGE_FUZZ_REPORT"):
        Path(os.environ["ISHOWTTS_EDGE_FUZZ_REPORT"]).write_text(json.dumps(figures, indent=1) + "\n")
    assert tally.crashes == 0, served.log()[-3000:]
    # Afterwards it still answers, and its own count of internal errors did not move.
    with Client(served.endpoint, timeout_s=30) as c:
        assert c.ping()["pong"] is True
        assert c.health()["ready"] is True
    after = daemon_counts(served.endpoint)
    internal = after["errors"].get("internal", 0) - before["errors"].get("internal", 0)
    assert tally.problem_count == 0 and internal == 0, tally.summary()
    log = served.log()
    assert "Traceback" not in log, log[log.index("Traceback") - 300:][:1500]
    assert tally.sent == FUZZ_COUNT and tally.unanswered == 0 and tally.unexpected_replies == 0
    assert tally.answered == tally.deserving and tally.dropped_as_documented == tally.sent - tally.deserving
    assert "internal" not in tally.codes and tally.codes["ok"] > 0 and tally.model_runs <= 40


def test_the_same_seed_makes_the_same_messages():
    """Also across a tick of the clock's seconds: libsndfile stamped the float references with the time."""
    limits = Limits(1 << 20, 2000, 256 << 10)
    first = generate(5, 400, limits)
    second = int(time.time())
    while int(time.time()) == second:
        time.sleep(0.05)
    again, other = generate(5, 400, limits), generate(6, 400, limits)
    assert any(b"PEAK" in frame[:100] for c in first for frame in c.frames)  # a float WAV is among them
    assert [(c.lane, c.frames) for c in first] == [(c.lane, c.frames) for c in again]
    assert [c.frames for c in first] != [c.frames for c in other]


# -- 2. concurrent clients ------------------------------------------------------------------------

TEXTS = ["Hi.", "Hello there.", "A little longer, this one.", "One more text, of another length again."]


def client_session(endpoint: str, name: str, lane: str, count: int, window: int, synth_every: int) -> dict:
    """Requests with ids unique to this client, ``window`` in flight (1 on REQ); returns what came back.

    Runs in a thread or a process of its own (hence only plain data in and out).
    """
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ if lane == "req" else zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sent: dict[str, dict] = {}
    replies: list[dict] = []
    problems: list[str] = []
    ops = ["ping", "status", "health", "voices", "bad", "unknown", "synthesize"]
    try:
        i = 0
        in_flight = 0
        deadline = time.monotonic() + 240
        while (i < count or in_flight) and time.monotonic() < deadline:
            while i < count and in_flight < window:
                rid = f"{name}-{i}"
                op = "synthesize" if i % synth_every == synth_every - 1 else ops[i % (len(ops) - 1)]
                if op == "synthesize":
                    header = {"op": op, "id": rid, "text": TEXTS[i % len(TEXTS)], "nfe_step": 1, "seed": i,
                              "format": "pcm_s16le"}
                elif op == "bad":
                    header = {"op": "synthesize", "id": rid, "text": i}
                elif op == "unknown":
                    header = {"op": f"op-{name}-{i}", "id": rid}
                else:
                    header = {"op": op, "id": rid}
                frames = [json.dumps(header).encode()]
                sock.send_multipart(frames if lane != "dealer" else [b"", *frames])
                sent[rid] = header
                in_flight += 1
                i += 1
            if not sock.poll(60_000):
                problems.append(f"{name}: nothing for 60 s with {in_flight} in flight")
                break
            frames = sock.recv_multipart()
            if lane == "dealer":
                if frames[0] != b"":
                    problems.append(f"{name}: reply without its delimiter")
                frames = frames[1:]
            header = json.loads(frames[0])
            text = sent.get(header.get("id"), {}).get("text")
            replies.append({"id": header.get("id"), "ok": header.get("ok"), "op": header.get("op"),
                            "code": (header.get("error") or {}).get("code"), "samples": header.get("samples"),
                            "text_chars": len(text) if isinstance(text, str) else None,
                            "audio_bytes": len(frames[1]) if len(frames) > 1 else 0})
            in_flight -= 1
        # Anything else arriving now is a duplicate.
        while lane != "req" and sock.poll(1000):
            frames = sock.recv_multipart()
            body = frames[1:] if lane == "dealer" else frames
            replies.append({"id": json.loads(body[0]).get("id"), "extra": True})
    finally:
        sock.close()
        ctx.term()
    return {"name": name, "sent": {k: v["op"] for k, v in sent.items()}, "replies": replies, "problems": problems}


def _in_process(queue, args) -> None:
    queue.put(client_session(*args))


def ghosts(endpoint: str, count: int) -> None:
    """Clients that send and leave at once: their replies have nowhere to go."""
    ctx = zmq.Context.instance()
    for i in range(count):
        sock = ctx.socket(zmq.DEALER if i % 2 else zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        header = json.dumps({"op": "synthesize" if i % 3 == 0 else "status", "id": f"ghost-{i}", "text": "Hi.",
                             "nfe_step": 1}).encode()
        sock.send_multipart([b"", header] if i % 2 else [header])
        time.sleep(0.005 * (i % 4))
        sock.close()


def test_concurrent_clients_each_get_exactly_their_own_replies(served):
    """REQ and DEALER clients, in threads and in processes, pipelining up to 8 requests while others
    send and leave: none lost, none duplicated, none crossed; a synthesize reply carries the audio of
    its own text."""
    with Client(served.endpoint, timeout_s=120) as c:  # the length each text's audio must have
        expected_samples = {len(t): c.synthesize(t, nfe_step=1, seed=0, format="pcm_s16le").header["samples"]
                            for t in TEXTS}
    sessions = [("req-a", "req", 60, 1, 9), ("req-b", "req", 60, 1, 11), ("dealer-a", "dealer", 120, 8, 13),
                ("bare-a", "bare", 120, 8, 17), ("dealer-b", "dealer", 80, 4, 7)]
    processes = [("proc-dealer", "dealer", 100, 8, 19), ("proc-req", "req", 50, 1, 10)]
    results: list[dict] = []
    threads = [threading.Thread(target=lambda a=a: results.append(client_session(served.endpoint, *a)))
               for a in sessions]
    threads.append(threading.Thread(target=ghosts, args=(served.endpoint, 40)))
    mp = multiprocessing.get_context("spawn")
    queue = mp.Queue()
    children = [mp.Process(target=_in_process, args=(queue, (served.endpoint, *a))) for a in processes]
    for worker in [*threads, *children]:
        worker.start()
    for _ in children:
        results.append(queue.get(timeout=300))
    for worker in [*threads, *children]:
        worker.join(300)
    assert len(results) == len(sessions) + len(processes)
    codes: Counter = Counter()
    for result in results:
        name, sent, replies = result["name"], result["sent"], result["replies"]
        assert result["problems"] == []
        got = Counter(r["id"] for r in replies)
        assert not [rid for rid in got if rid not in sent], f"{name} got replies for others: {got.keys() - sent.keys()}"
        assert not [rid for rid, n in got.items() if n > 1], f"{name} got duplicates"
        assert set(got) == set(sent), f"{name} lost {sorted(set(sent) - set(got))[:10]}"
        for r in replies:
            assert r["op"] in (sent[r["id"]], None), r
            if r["ok"]:
                codes["ok"] += 1
                if r["op"] == "synthesize":
                    assert r["samples"] == expected_samples[r["text_chars"]] and r["audio_bytes"] == 2 * r["samples"], r
            else:
                codes[r["code"]] += 1
                assert r["code"] in STABLE, r
    assert codes["ok"] > 0 and codes["bad_request"] > 0 and codes["unknown_op"] > 0
    assert served.proc.poll() is None


# -- 3. stop and restart ---------------------------------------------------------------------------


def _send(endpoint: str, header: dict) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send(json.dumps(header).encode())
    return sock


def _answer(sock: zmq.Socket, timeout_s: float) -> dict | None:
    try:
        return json.loads(sock.recv_multipart()[0]) if sock.poll(int(timeout_s * 1000)) else None
    finally:
        sock.close()


def test_sigterm_answers_every_running_and_queued_request_then_exits_0_and_removes_its_sockets(tmp_path, demo_cache):
    """The running synthesis is kept well inside the 30 s drain even on a loaded machine; one longer
    than the drain is another case (it must then be cancelled and answered shutting_down)."""
    proc = start(tmp_path, demo_cache)
    try:
        text = " ".join(["This sentence keeps the engine busy."] * 6)
        running = _send(proc.endpoint, {"op": "synthesize", "id": "running", "text": text, "nfe_step": 16})
        with Client(proc.endpoint, timeout_s=10) as c:
            deadline = time.monotonic() + 60
            while c.status()["queue"]["pending"] < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            queued = [_send(proc.endpoint, {"op": "synthesize", "id": f"queued-{i}", "text": "Hi.", "nfe_step": 1})
                      for i in range(MAX_QUEUE + 2)]  # the last ones find the queue full
            dealer = zmq.Context.instance().socket(zmq.DEALER)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.connect(proc.endpoint)
            for i in range(3):
                dealer.send_multipart([b"", json.dumps({"op": "synthesize", "id": f"dealer-{i}", "text": "Hi."}).encode()])
            while c.status()["queue"]["pending"] < MAX_QUEUE + 1 and time.monotonic() < deadline:
                time.sleep(0.01)
        proc.proc.send_signal(signal.SIGTERM)
        answers = {f"queued-{i}": _answer(s, 60) for i, s in enumerate(queued)}
        for i in range(3):
            frames = dealer.recv_multipart() if dealer.poll(60_000) else [b"", b"null"]
            header = json.loads(frames[1])
            answers[header["id"] if header else f"dealer-lost-{i}"] = header
        dealer.close()
        answers["running"] = _answer(running, 120)
        rc = proc.proc.wait(120)
        lost = [rid for rid, h in answers.items() if h is None]
        assert lost == [], f"no reply for {lost}\n{proc.log()[-3000:]}"
        codes = Counter("ok" if h["ok"] else h["error"]["code"] for h in answers.values())
        assert set(codes) <= {"ok", "shutting_down", "busy"}, answers
        assert answers["running"]["ok"] or answers["running"]["error"]["code"] == "shutting_down"
        assert codes["shutting_down"] > 0 and codes["busy"] > 0, codes  # some were waiting, some found it full
        assert rc == 0, proc.log()[-3000:]
        assert sockets_left(proc) == []
    finally:
        proc.stop()


def test_after_sigkill_a_restart_cleans_the_stale_socket_and_the_lazy_pirate_client_carries_on(tmp_path, demo_cache):
    proc = start(tmp_path, demo_cache)
    restarted = None
    try:
        client = Client(proc.endpoint, timeout_s=1.0, retries=120)
        first_pid = client.status()["pid"]
        # A synthesis in flight dies with the daemon: its client times out after one attempt.
        in_flight: dict = {}
        synth_client = Client(proc.endpoint, timeout_s=5.0, retries=5)

        def synth() -> None:
            try:
                synth_client.synthesize(" ".join(["Killed half way through."] * 20), nfe_step=64)
            except ClientError as exc:
                in_flight["error"] = exc.code

        worker = threading.Thread(target=synth)
        worker.start()
        deadline = time.monotonic() + 60
        while client.status()["queue"]["pending"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.proc.kill()
        assert proc.proc.wait(30) == -signal.SIGKILL
        proc.stop()
        assert sockets_left(proc), "SIGKILL should leave the socket file behind"
        worker.join(30)
        assert in_flight == {"error": "timeout"}

        # The Lazy Pirate client, asked while nothing listens, gets its answer from the restarted daemon.
        answer: dict = {}
        asking = threading.Thread(target=lambda: answer.update(client.status()))
        asking.start()
        time.sleep(2.5)  # two or three attempts time out first
        assert not answer
        restarted = DaemonProcess(tmp_path, demo_cache, config=tmp_path / "edge.toml")
        asking.join(120)
        assert answer and answer["pid"] == restarted.proc.pid != first_pid
        restarted.wait_ready()
        out = client.synthesize("Back again.", nfe_step=1)
        assert out.header["samples"] > 0
        health = client.health()
        assert health["ready"] is True and "events" not in health["reasons"], health
        # The synthesize sent to the killed daemon was never run by the new one (only its own self-test was).
        assert client.status()["requests"]["requests"].get("synthesize") == 2
        client.close()
        synth_client.close()
        assert restarted.stop() == 0
        assert sockets_left(restarted) == []
    finally:
        proc.stop()
        if restarted is not None:
            restarted.stop()


def test_sigterm_while_the_model_loads_exits_0_without_sockets(tmp_path, demo_cache):
    proc = DaemonProcess(tmp_path, demo_cache, config=write_config(tmp_path / "edge.toml"))
    try:
        with Client(proc.endpoint, timeout_s=1.0, retries=60) as c:
            state = c.ping()["state"]  # the socket answers from the start; the model loads behind it
        assert state in ("starting", "loading", "warming"), f"the model was already up ({state}): nothing tested"
        proc.proc.send_signal(signal.SIGTERM)
        assert proc.proc.wait(120) == 0, f"stopped while {state}:\n{proc.log()[-3000:]}"
        assert sockets_left(proc) == [], f"stopped while {state}"
    finally:
        proc.stop()


@pytest.mark.parametrize(
    "junk,code",
    [([b"\xff\xfe"], "bad_reply"), ([b"not json"], "bad_reply"), ([b"[1, 2]"], "bad_reply"), ([b'{"v": 1}'], "bad_reply"),
     ([b"[" * 100_000], "bad_reply"), ([b'{"ok": false, "error": "boom"}'], "unknown")],
    ids=["not-utf8", "not-json", "not-an-object", "no-ok", "too-deep", "error-not-an-object"],
)
def test_a_reply_that_is_not_the_protocol_is_a_client_error(tmp_path, junk, code):
    """An endpoint that is not this daemon (another app's ROUTER) answers junk: the CLI prints one line, no traceback."""
    endpoint = f"ipc://{tmp_path}/other.sock"
    other = zmq.Context.instance().socket(zmq.ROUTER)
    other.bind(endpoint)

    def answer() -> None:
        if other.poll(10_000):
            envelope = other.recv_multipart()[:2]
            other.send_multipart(envelope + junk)

    replier = threading.Thread(target=answer)
    replier.start()
    try:
        with Client(endpoint, timeout_s=10, retries=0) as client, pytest.raises(ClientError) as err:
            client.ping()
        assert err.value.code == code
    finally:
        replier.join(10)
        other.close(linger=0)
