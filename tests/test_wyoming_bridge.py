"""The Wyoming bridge, driven by the wyoming package's own TCP client as Home Assistant drives it,
against a real bridge process and a real daemon on the demo model."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event, async_read_event
from wyoming.info import Describe, Info
from wyoming.ping import Ping, Pong
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped, SynthesizeVoice

from conftest import REPO, DaemonProcess, daemon_env
from engine_support import Slowdown
from ishowtts_edge.bench.daemon_process import stop_process
from ishowtts_edge.client import Client
from ishowtts_edge.config import ConfigError, load_settings
from ishowtts_edge.wyoming_bridge.handler import MAX_TEXT_PARTS
from ishowtts_edge.wyoming_bridge.sentences import SentenceSplitter, pack_sentences, split_sentences
from ishowtts_edge.wyoming_bridge.speaker import CHUNK_PLAN

SEED = 7
TEXT = "Hello there. This is the second sentence! And a third one?"
SENTENCES = ["Hello there.", "This is the second sentence!", "And a third one?"]
READ_TIMEOUT_S = 120.0


class BridgeProcess:
    """``python -m ishowtts_edge.wyoming_bridge --config FILE`` as a child, its port read from its log."""

    def __init__(self, tmp: Path, endpoint: str, cache: Path, extra_toml: str = "", server_toml: str = "") -> None:
        self.config = tmp / "bridge.toml"
        self.config.write_text(
            f'[server]\nendpoint = "{endpoint}"\n{server_toml}\n[wyoming]\nport = 0\nseed = {SEED}\n{extra_toml}'
        )
        self.log_path = tmp / "bridge.log"
        self._log = open(self.log_path, "wb")
        env = daemon_env(tmp, cache)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ishowtts_edge.wyoming_bridge", "--config", str(self.config)],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=tmp,
        )
        self.port = self._wait_port()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_port(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(r"listening host=\S+ port=(\d+)", self.log())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                raise AssertionError(f"bridge exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"bridge did not listen:\n{self.log()}")

    def wait_log(self, pattern: str, count: int = 1, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(re.findall(pattern, self.log())) >= count:
                return
            time.sleep(0.05)
        raise AssertionError(f"{pattern!r} x{count} not in the bridge log:\n{self.log()}")

    def wait_quiet(self, seconds: float = 1.0, timeout: float = 30.0) -> None:
        """Until the log has not grown for ``seconds``: the connections of earlier tests have ended."""
        deadline = time.monotonic() + timeout
        size, since = len(self.log()), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = len(self.log())
            if now != size:
                size, since = now, time.monotonic()
            elif time.monotonic() - since >= seconds:
                return

    def stop(self) -> int:
        code = stop_process(self.proc, 30)
        self._log.close()
        return code


@pytest.fixture(scope="module")
def slowdown(tmp_path_factory):
    return Slowdown(tmp_path_factory.mktemp("devfreq"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, demo_cache, slowdown):
    """conftest's daemon, whose engine a test can slow down (engine.emulate_clock_devfreq) to catch a
    synthesis in the middle."""
    tmp = tmp_path_factory.mktemp("daemon")
    proc = DaemonProcess(tmp, demo_cache, ISHOWTTS_EDGE_HARDWARE__ENABLED="false",
                         ISHOWTTS_EDGE_ENGINE__EMULATE_CLOCK_DEVFREQ=str(slowdown.root))
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def bridge(daemon, tmp_path_factory, demo_cache):
    proc = BridgeProcess(tmp_path_factory.mktemp("bridge"), daemon.endpoint, demo_cache)
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()
        # Nothing a peer sent is logged raw, and nothing broke inside the bridge.
        assert "Traceback" not in proc.log(), proc.log()


def daemon_pcm(daemon, texts: list[str], voice: str | None = None) -> tuple[bytes, dict]:
    """What the daemon itself answers in one reply for each text in turn, with the bridge's seed and
    chunk plan (a stream gives the same samples as one reply for the same text, seed and plan)."""
    audio, header = b"", {}
    with Client(daemon.endpoint, timeout_s=60) as client:
        for text in texts:
            out = client.synthesize(text, voice, format="pcm_s16le", seed=SEED, chunk_plan=CHUNK_PLAN)
            audio += out.audio
            header = out.header
    return audio, header


def wait_status(daemon, until, timeout: float = 60.0) -> dict:
    """Poll the daemon's status (answered while it synthesizes) until ``until(status)``."""
    deadline = time.monotonic() + timeout
    with Client(daemon.endpoint, timeout_s=10) as client:
        while True:
            status = client.status()
            if until(status) or time.monotonic() > deadline:
                return status
            time.sleep(0.05)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, READ_TIMEOUT_S))


async def read_until(client: AsyncTcpClient, last: type) -> list[Event]:
    events = []
    while True:
        event = await client.read_event()
        assert event is not None, f"connection closed after {[e.type for e in events]}"
        events.append(event)
        if last.is_type(event.type):
            return events


def audio_of(events: list[Event]) -> bytes:
    return b"".join(AudioChunk.from_event(e).audio for e in events if AudioChunk.is_type(e.type))


async def ha_synthesize(port: int, text: str, voice: SynthesizeVoice | None = None) -> list[Event]:
    """Home Assistant's async_get_tts_audio: one synthesize, read until audio-stop."""
    async with AsyncTcpClient("127.0.0.1", port) as client:
        await client.write_event(Synthesize(text=text, voice=voice).event())
        return await read_until(client, AudioStop)


def words(text: str) -> list[str]:
    """Chunks the way a language model's deltas reach Home Assistant: a word each, space in front."""
    return re.findall(r"\s*\S+", text)


# -- describe ------------------------------------------------------------------------------------


def test_describe_lists_the_daemons_voices_with_a_language_and_streaming_support(bridge, daemon):
    async def go():
        async with AsyncTcpClient("127.0.0.1", bridge.port) as client:
            await client.write_event(Describe().event())
            return await client.read_event()

    event = run(go())
    assert Info.is_type(event.type)
    (program,) = Info.from_event(event).tts
    assert program.installed and program.supports_synthesize_streaming
    with Client(daemon.endpoint) as client:
        listed = client.voices()
    assert [v.name for v in program.voices] == [v["id"] for v in listed]
    demo = next(v for v in program.voices if v.name == "demo")
    assert demo.installed and demo.languages == ["en"]
    assert "untrained" in demo.description


def test_the_daemon_lists_each_voice_with_its_language(daemon):
    with Client(daemon.endpoint) as client:
        demo = next(v for v in client.voices() if v["id"] == "demo")
    assert demo["language"] == "en"


# -- synthesize ----------------------------------------------------------------------------------


def test_synthesize_answers_the_daemons_audio_of_the_whole_text_between_one_start_and_one_stop(bridge, daemon):
    events = run(ha_synthesize(bridge.port, TEXT))
    expected, header = daemon_pcm(daemon, [TEXT])
    types = [e.type for e in events]
    assert types[0] == "audio-start" and types[-1] == "audio-stop"
    assert set(types[1:-1]) == {"audio-chunk"}
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (header["sample_rate"], 2, header["channels"])
    assert audio_of(events) == expected


def test_synthesize_with_a_voice_by_name_or_by_language_uses_that_voice(bridge, daemon):
    expected, _ = daemon_pcm(daemon, ["Named voice."], voice="demo")
    by_name = run(ha_synthesize(bridge.port, "Named voice.", SynthesizeVoice(name="demo", speaker="ignored")))
    by_language = run(ha_synthesize(bridge.port, "Named voice.", SynthesizeVoice(language="en_US")))
    assert audio_of(by_name) == expected
    assert audio_of(by_language) == expected


def test_a_daemon_error_becomes_an_error_event_with_its_code_and_the_connection_stays_usable(bridge, daemon):
    async def go():
        async with AsyncTcpClient("127.0.0.1", bridge.port) as client:
            await client.write_event(Synthesize(text="Hello.", voice=SynthesizeVoice(name="no-such-voice")).event())
            failed = await read_until(client, AudioStop)
            await client.write_event(Synthesize(text="Hello there.").event())
            return failed, await read_until(client, AudioStop)

    failed, after = run(go())
    assert [e.type for e in failed] == ["error", "audio-stop"]
    error = Error.from_event(failed[0])
    assert error.code == "unknown_voice" and "unknown_voice" in error.text and "no-such-voice" in error.text
    assert audio_of(after) == daemon_pcm(daemon, ["Hello there."])[0]


def test_an_empty_text_is_refused_with_bad_request(bridge):
    events = run(ha_synthesize(bridge.port, "   "))
    assert [e.type for e in events] == ["error", "audio-stop"]
    assert Error.from_event(events[0]).code == "bad_request"


# -- streaming text in ----------------------------------------------------------------------------


def test_streamed_text_is_spoken_sentence_by_sentence_and_the_full_text_resent_after_it_is_ignored(bridge, daemon):
    """Home Assistant's async_stream_tts_audio: start, a word per chunk, the whole text again, stop."""
    chunks = words(TEXT)
    first_sentence_words = len(words(SENTENCES[0]))

    async def go():
        async with AsyncTcpClient("127.0.0.1", bridge.port) as client:
            await client.write_event(SynthesizeStart(voice=SynthesizeVoice(name="demo")).event())
            # The first sentence and the word that shows it has ended...
            for chunk in chunks[: first_sentence_words + 1]:
                await client.write_event(SynthesizeChunk(text=chunk).event())
            # ... are spoken before any more text arrives.
            early = await read_until(client, AudioChunk)
            for chunk in chunks[first_sentence_words + 1 :]:
                await client.write_event(SynthesizeChunk(text=chunk).event())
            await client.write_event(Synthesize(text=TEXT, voice=SynthesizeVoice(name="demo")).event())
            await client.write_event(SynthesizeStop().event())
            return early + await read_until(client, SynthesizeStopped)

    events = run(go())
    expected, header = daemon_pcm(daemon, SENTENCES, voice="demo")
    types = [e.type for e in events]
    assert types[0] == "audio-start" and types[-2:] == ["audio-stop", "synthesize-stopped"]
    assert set(types[1:-2]) == {"audio-chunk"}
    start = AudioStart.from_event(events[0])
    assert (start.rate, start.width, start.channels) == (header["sample_rate"], 2, header["channels"])
    assert audio_of(events) == expected  # each sentence once: the resent full text added nothing


def test_a_stream_whose_text_never_ends_a_sentence_is_spoken_at_stop(bridge, daemon):
    async def go():
        async with AsyncTcpClient("127.0.0.1", bridge.port) as client:
            await client.write_event(SynthesizeStart().event())
            for chunk in words("no full stop at the end"):
                await client.write_event(SynthesizeChunk(text=chunk).event())
            await client.write_event(SynthesizeStop().event())
            return await read_until(client, SynthesizeStopped)

    assert audio_of(run(go())) == daemon_pcm(daemon, ["no full stop at the end"])[0]


def test_stream_events_out_of_order_are_refused_and_the_connection_stays_usable(bridge):
    async def go():
        async with AsyncTcpClient("127.0.0.1", bridge.port) as client:
            await client.write_event(SynthesizeChunk(text="orphan").event())
            orphan = await client.read_event()
            await client.write_event(SynthesizeStop().event())
            stray_stop = await client.read_event()
            await client.write_event(Ping(text="still there?").event())
            return orphan, stray_stop, await client.read_event()

    orphan, stray_stop, pong = run(go())
    assert Error.from_event(orphan).code == "bad_request"
    assert Error.from_event(stray_stop).code == "bad_request"
    assert Pong.from_event(pong).text == "still there?"


#: The daemon's max_text_chars as the small bridge reads it: a request's text may be MAX_TEXT_PARTS times that.
SMALL_MAX_CHARS = 20
SMALL_LIMIT = SMALL_MAX_CHARS * MAX_TEXT_PARTS


@pytest.fixture(scope="module")
def small_bridge(daemon, tmp_path_factory, demo_cache):
    """A bridge that takes the daemon's max_text_chars to be 20 (its own config), so its limit on a
    request's whole text is reached with a few hundred characters."""
    proc = BridgeProcess(tmp_path_factory.mktemp("small-bridge"), daemon.endpoint, demo_cache,
                         server_toml=f"max_text_chars = {SMALL_MAX_CHARS}\n")
    try:
        yield proc
    finally:
        assert proc.stop() == 0, proc.log()
        assert "Traceback" not in proc.log(), proc.log()


async def read_to_the_end(client: AsyncTcpClient, last: type) -> list[Event | None]:
    """Events until ``last`` or the bridge's end of file (then None ends the list)."""
    events: list[Event | None] = []
    while True:
        event = await client.read_event()
        events.append(event)
        if event is None or last.is_type(event.type):
            return events


def stream_of(chunks: list[str]) -> list[Event]:
    return [SynthesizeStart().event(), *(SynthesizeChunk(text=c).event() for c in chunks), SynthesizeStop().event()]


def test_a_streams_whole_text_is_bounded_and_past_the_bound_it_gets_text_too_long_and_the_connection_is_closed(
        small_bridge):
    """Each chunk was bounded, their sum was not: a client could stream text for ever, the bridge queueing
    it and the daemon speaking it.  Chunks of punctuation alone are counted but never spoken."""
    at_limit = [". " * 5] * (SMALL_LIMIT // 10)
    assert sum(map(len, at_limit)) == SMALL_LIMIT
    ended = small_bridge.log().count("connection ended")

    async def go():
        async with AsyncTcpClient("127.0.0.1", small_bridge.port) as client:
            for event in stream_of(at_limit):
                await client.write_event(event)
            whole = await read_to_the_end(client, SynthesizeStopped)
            for event in stream_of([*at_limit, "."]):  # a new stream counts from zero, and goes one over
                await client.write_event(event)
            return whole, await read_to_the_end(client, SynthesizeStopped)

    whole, over = run(go())
    assert [e.type for e in whole] == ["synthesize-stopped"]
    assert [e.type if e else None for e in over] == ["error", None]
    error = Error.from_event(over[0])
    assert error.code == "text_too_long" and str(SMALL_LIMIT) in error.text
    small_bridge.wait_log("connection ended", ended + 1)
    assert 'how="refused: text_too_long"' in small_bridge.log()


def test_a_stream_that_runs_past_the_bound_while_it_is_spoken_is_refused_and_the_bridge_serves_on(small_bridge, daemon):
    chunks = words(" ".join(["word"] * (SMALL_LIMIT // 5 + 1)))  # sentences of words, cut at 20 characters each

    async def go():
        async with AsyncTcpClient("127.0.0.1", small_bridge.port) as client:
            for event in stream_of(chunks):
                await client.write_event(event)
            return await read_to_the_end(client, SynthesizeStopped)

    events = run(go())
    assert [e.type if e else None for e in events][-2:] == ["error", None]
    assert Error.from_event(events[-2]).code == "text_too_long"
    assert "synthesize-stopped" not in [e.type for e in events if e]
    assert audio_of(run(ha_synthesize(small_bridge.port, "Still serving."))) == daemon_pcm(daemon, ["Still serving."])[0]


def test_a_synthesize_text_past_the_bound_gets_text_too_long_and_its_audio_stop(small_bridge):
    at_limit, over = run(ha_synthesize(small_bridge.port, "." * SMALL_LIMIT)), run(ha_synthesize(small_bridge.port, "." * (SMALL_LIMIT + 1)))
    assert [e.type for e in at_limit] == ["audio-stop"]  # accepted, and nothing in it to speak
    assert [e.type for e in over] == ["error", "audio-stop"]
    assert Error.from_event(over[0]).code == "text_too_long"


# -- the peer ---------------------------------------------------------------------------------------


def test_two_clients_at_once_each_get_their_own_audio(bridge, daemon):
    texts = ["First client speaks. Twice over.", "Second client here."]

    async def go():
        return await asyncio.gather(*(ha_synthesize(bridge.port, t) for t in texts))

    results = run(go())
    assert audio_of(results[0]) == daemon_pcm(daemon, texts[:1])[0]
    assert audio_of(results[1]) == daemon_pcm(daemon, texts[1:])[0]


LONG_TEXT = " ".join(f"Sentence number {n} of a long answer." for n in range(1, 9))
#: One sentence that the daemon's plan cuts into several chunks.
LONG_SENTENCE = ", ".join(f"clause number {n} of one long sentence" for n in range(1, 9)).capitalize() + "."


def cancelled_by_disconnect(status: dict) -> int:
    return status["requests"].get("cancelled", {}).get("disconnect", 0)


def leave_after_first_audio(bridge, daemon, slowdown, send) -> dict:
    """Connect, ``send(client)``, read the first audio-chunk, check the daemon is still synthesizing,
    slow it to a crawl and disconnect.  Returns the daemon's status once its worker is free."""
    before = cancelled_by_disconnect(wait_status(daemon, lambda s: True))
    ended = bridge.log().count("connection ended")

    async def go():
        client = AsyncTcpClient("127.0.0.1", bridge.port)
        await client.connect()
        await send(client)
        await read_until(client, AudioChunk)
        # The first audio is here while the daemon still works on the rest of the text.
        assert (await asyncio.to_thread(wait_status, daemon, lambda s: True))["queue"]["pending"] == 1
        slowdown.set(50)  # from here a stream left running would hold the worker for minutes
        await client.disconnect()

    slowdown.set(3)
    try:
        run(go())
        bridge.wait_log("connection ended", ended + 1)
        # A cancelled stream stops before its next sampling step (one step here is up to 50 times slower).
        status = wait_status(daemon, lambda s: s["queue"]["pending"] == 0 and cancelled_by_disconnect(s) > before, 45)
    finally:
        slowdown.set(1)
    assert status["queue"]["pending"] == 0, "the daemon still works for a client that has gone"
    assert cancelled_by_disconnect(status) == before + 1
    return status


def test_a_client_that_disconnects_cancels_its_running_stream_in_the_daemon_which_serves_on(bridge, daemon, slowdown):
    async def send(client):
        await client.write_event(Synthesize(text=LONG_TEXT).event())

    leave_after_first_audio(bridge, daemon, slowdown, send)
    assert audio_of(run(ha_synthesize(bridge.port, "Still serving."))) == daemon_pcm(daemon, ["Still serving."])[0]


def test_a_streaming_client_that_disconnects_cancels_the_sentence_running_in_the_daemon(bridge, daemon, slowdown):
    async def send(client):
        await client.write_event(SynthesizeStart().event())
        for chunk in words(LONG_SENTENCE + " And more"):
            await client.write_event(SynthesizeChunk(text=chunk).event())

    leave_after_first_audio(bridge, daemon, slowdown, send)
    assert audio_of(run(ha_synthesize(bridge.port, "Still serving."))) == daemon_pcm(daemon, ["Still serving."])[0]


async def raw_exchange(port: int, data: bytes, close: bool = False) -> list[Event | None]:
    """Send bytes that wyoming's client would never write; return what comes back until the bridge closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    if close:
        writer.close()
        return []
    events: list[Event | None] = []
    while True:
        event = await async_read_event(reader)
        events.append(event)
        if event is None:
            writer.close()
            return events


@pytest.mark.parametrize(
    "data, code",
    [
        (b"this is not json\n", "bad_request"),
        (b"[1, 2, 3]\n", "bad_request"),
        (b'{"type": "synthesize", "data": "text"}\n', "bad_request"),
        (b'{"type": "synthesize", "data_length": 1000000000000}\n', "too_large"),
        (b'{"type": "synthesize", "payload_length": 1000000000000}\n', "too_large"),
        (b'{"type": "synthesize", "data_length": -5}\n', "bad_request"),
        (b'{"type": "synthesize", "data_length": 4}\nnope', "bad_request"),
        (b"x" * (200 * 1024), "too_large"),  # a header line that never ends
    ],
    ids=["not json", "not an object", "data not an object", "huge data_length", "huge payload_length",
         "negative length", "data not json", "endless header"],
)
def test_a_broken_stream_gets_an_error_with_a_stable_code_and_the_connection_is_closed(bridge, data, code):
    events = run(raw_exchange(bridge.port, data))
    assert len(events) == 2 and events[-1] is None, events
    assert Error.from_event(events[0]).code == code


def test_unknown_event_types_are_ignored_and_the_connection_stays_usable(bridge):
    async def go():
        async with AsyncTcpClient("127.0.0.1", bridge.port) as client:
            await client.write_event(Event(type="frobnicate", data={"x": 1}, payload=b"abc"))
            await client.write_event(Describe().event())
            return await client.read_event()

    assert Info.is_type(run(go()).type)


def test_a_peer_that_closes_in_the_middle_of_an_event_leaves_the_bridge_serving(bridge):
    ended = bridge.log().count("connection ended")
    run(raw_exchange(bridge.port, b'{"type": "synthesize", "data_length": 100}\n{"text": "half', close=True))
    bridge.wait_log("connection ended", ended + 1)
    assert re.search(r"connection ended peer=\S+ how=\"lost: closed inside", bridge.log())
    events = run(ha_synthesize(bridge.port, "Still serving."))
    assert events[0].type == "audio-start" and events[-1].type == "audio-stop"


# -- pieces ------------------------------------------------------------------------------------------


def test_sentences_end_at_terminal_punctuation_followed_by_space_or_at_the_end():
    assert split_sentences(TEXT, 2000) == SENTENCES
    assert split_sentences("Pi is 3.14 today.  \n\nNew paragraph", 2000) == ["Pi is 3.14 today.", "New paragraph"]
    assert split_sentences('He said "stop." Then left... "Why?"', 2000) == ['He said "stop."', "Then left...", '"Why?"']
    assert split_sentences("你好。今天好吗？", 2000) == ["你好。", "今天好吗？"]
    assert split_sentences("... ?! Real words.", 2000) == ["Real words."]


def test_a_sentence_waits_for_the_space_after_its_full_stop_when_text_streams_in():
    splitter = SentenceSplitter(2000)
    assert splitter.add("Hello there") == []
    assert splitter.add(".") == []
    assert splitter.add(" Next") == ["Hello there."]
    assert splitter.finish() == ["Next"]


def test_text_without_a_sentence_end_is_cut_at_a_space_so_pending_text_stays_bounded():
    splitter = SentenceSplitter(20)
    out = []
    for _ in range(50):
        out += splitter.add("word ")
        assert len(splitter._pending) <= 20
    out += splitter.finish()
    assert all(len(s) <= 20 for s in out) and " ".join(out).split() == ["word"] * 50


def test_a_text_longer_than_the_daemon_takes_is_sent_in_parts_of_whole_sentences():
    assert pack_sentences(TEXT, 2000) == [TEXT]  # the daemon cuts it into chunks itself
    assert pack_sentences(TEXT, 50) == ["Hello there. This is the second sentence!", "And a third one?"]
    assert pack_sentences(" ... ", 2000) == []
    long = " ".join(["word"] * 30)
    assert all(len(p) <= 20 for p in pack_sentences(long, 20)) and " ".join(pack_sentences(long, 20)) == long


def test_a_non_loopback_wyoming_host_is_refused_unless_allow_remote_is_set(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[wyoming]\nhost = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match="allow_remote"):
        load_settings(config)
    config.write_text('[wyoming]\nhost = "0.0.0.0"\nallow_remote = true\n')
    assert load_settings(config).wyoming.host == "0.0.0.0"
    config.write_text('[wyoming]\nhost = "::1"\n')
    assert load_settings(config).wyoming.port == 10200


def test_a_voice_language_that_is_not_a_language_tag_is_refused(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[voices.a]\ndir = "/x"\nlanguage = "english please"\n')
    with pytest.raises(ConfigError, match="voices.a.language"):
        load_settings(config)


def test_a_voice_name_or_language_too_long_to_be_one_is_refused_and_never_logged_whole(bridge, daemon):
    """Both are peer data that the bridge logs and forwards; a megabyte of it must stay out of the journal."""
    huge = "x\n<0>forged " + "A" * 200_000
    for voice in (SynthesizeVoice(name=huge), SynthesizeVoice(language=huge)):
        events = run(ha_synthesize(bridge.port, "Hello there.", voice))
        assert [e.type for e in events] == ["error", "audio-stop"]
        assert Error.from_event(events[0]).code == "bad_request"
    events = run(ha_synthesize(bridge.port, "Hello there."))
    assert audio_of(events) == daemon_pcm(daemon, ["Hello there."])[0]
    assert max(len(line) for line in bridge.log().splitlines()) < 1000
    assert "<0>forged" not in bridge.log()


@pytest.mark.parametrize("data", [{"text": 5}, {"text": "Hello.", "voice": "demo"}, {"text": "Hello.", "voice": {"name": 5}}],
                         ids=["text not a string", "voice not an object", "voice name not a string"])
def test_a_malformed_synthesize_gets_an_error_and_still_its_audio_stop(bridge, data):
    """Home Assistant reads until audio-stop: without it, a bad field would hang the caller."""
    async def go():
        async with AsyncTcpClient("127.0.0.1", bridge.port) as client:
            await client.write_event(Event(type="synthesize", data=data))
            return await read_until(client, AudioStop)

    events = run(go())
    assert [e.type for e in events] == ["error", "audio-stop"]
    assert Error.from_event(events[0]).code == "bad_request"


def test_a_stream_started_with_a_malformed_voice_gets_an_error_and_still_its_synthesize_stopped(bridge):
    async def go():
        async with AsyncTcpClient("127.0.0.1", bridge.port) as client:
            await client.write_event(Event(type="synthesize-start", data={"voice": {"name": ["demo"]}}))
            await client.write_event(SynthesizeChunk(text="Hello there. ").event())
            await client.write_event(SynthesizeStop().event())
            return await read_until(client, SynthesizeStopped)

    events = run(go())
    assert [e.type for e in events] == ["error", "synthesize-stopped"]
    assert Error.from_event(events[0]).code == "bad_request"


def test_idle_and_trickling_connections_at_the_cap_give_way_to_a_new_client(bridge, daemon):
    """Eight sockets that connect and say nothing (or a header byte now and then) filled
    max_connections for ever: every later client got busy."""
    import socket

    bridge.wait_quiet()  # an earlier test's connection still ending would take one of the eight places
    mark = len(bridge.log())  # the bridge serves the whole module: judge this test's lines only
    replaced = bridge.log().count("idle connection closed for a new one")
    idle = [socket.create_connection(("127.0.0.1", bridge.port)) for _ in range(8)]
    try:
        idle[0].sendall(b'{"type": "synth')  # a trickle: half a header, never finished
        time.sleep(1.5)
        for attempt in range(3):  # the first displaces the longest idle; its place then serves the others
            events = run(ha_synthesize(bridge.port, "Hello there."))
            assert audio_of(events) == daemon_pcm(daemon, ["Hello there."])[0]
        bridge.wait_log("idle connection closed for a new one", count=replaced + 1)
        assert 'how="replaced: idle the longest at max_connections"' in bridge.log()[mark:]
        assert "connection refused" not in bridge.log()[mark:]
    finally:
        for sock in idle:
            sock.close()


def test_a_peer_that_stops_reading_its_audio_loses_its_connection_and_frees_its_place(bridge, daemon):
    import socket

    ended = bridge.log().count("connection ended")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the bridge's buffers fill
    sock.connect(("127.0.0.1", bridge.port))
    text = " ".join(f"This is sentence number {i} of a long answer nobody listens to." for i in range(40))
    try:
        body = ('{"text": "%s"}' % text).encode()
        sock.sendall(b'{"type": "synthesize", "data_length": %d}\n' % len(body) + body)
        bridge.wait_log("peer stopped reading; connection dropped", timeout=110)
        bridge.wait_log("connection ended", ended + 1)
        assert 'how="dropped: not reading"' in bridge.log()
    finally:
        sock.close()
    events = run(ha_synthesize(bridge.port, "Still serving."))
    assert events[0].type == "audio-start" and events[-1].type == "audio-stop"


def test_a_wyoming_host_with_a_control_character_is_a_configuration_error(tmp_path):
    """urlparse drops a newline, so the loopback check passed and the bridge then failed to listen (exit 1)."""
    config = tmp_path / "c.toml"
    config.write_text('[wyoming]\nhost = "127.0.0.1\\n"\nport = 0\n')
    r = subprocess.run([sys.executable, "-m", "ishowtts_edge.wyoming_bridge", "--config", str(config)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 78, r.stderr
    assert "wyoming.host" in r.stderr


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_a_peer_that_sends_faster_than_it_is_answered_waits_in_its_socket_not_in_the_bridges_memory(
        bridge, daemon, slowdown):
    """While a synthesis runs, the bridge reads ahead at most QUEUE_BYTES of events (2 MiB); the rest
    stays in the kernel's socket buffers (TCP back-pressure).  Counted by events alone, 60 events of
    900 kB would all be read and held."""
    from wyoming.event import async_write_event

    pad = "x" * 900_000
    ended = bridge.log().count("connection ended")

    async def go() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
        await async_write_event(Synthesize(text=LONG_TEXT).event(), writer)
        await asyncio.to_thread(wait_status, daemon, lambda s: s["queue"]["pending"] == 1)
        before = rss_kib(bridge.proc.pid)

        async def flood():
            for _ in range(60):
                await async_write_event(Event(type="ping", data={"pad": pad}), writer)

        sender = asyncio.create_task(flood())
        await asyncio.wait([sender], timeout=8.0)
        grown = rss_kib(bridge.proc.pid) - before
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        # Gone while the bridge does not read: it learns so when it next writes (the first audio).
        writer.transport.abort()
        slowdown.set(1)
        return grown

    slowdown.set(50)  # the synthesis holds the bridge's worker for the whole test
    try:
        grown_kib = run(go())
        bridge.wait_log("connection ended", ended + 1)
        wait_status(daemon, lambda s: s["queue"]["pending"] == 0, 60)
    finally:
        slowdown.set(1)
    assert grown_kib < 20 * 1024, f"the bridge grew by {grown_kib} KiB while its worker was busy"
    assert audio_of(run(ha_synthesize(bridge.port, "Still serving."))) == daemon_pcm(daemon, ["Still serving."])[0]


def test_a_peer_that_leaves_with_more_events_queued_than_the_bridge_reads_ahead_ends_its_connection(
        bridge, daemon, slowdown):
    """Home Assistant streams a long answer word by word while the first sentence is synthesized, so
    the bridge stops reading at 64 queued events; a peer that leaves then is noticed when the first
    audio is written to it, and the connection ends (its place is freed, its synthesis cancelled)."""
    from wyoming.event import async_write_event

    ended = bridge.log().count("connection ended")

    async def go() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.port)
        await async_write_event(SynthesizeStart().event(), writer)
        await async_write_event(SynthesizeChunk(text="The first sentence is here. ").event(), writer)
        await asyncio.to_thread(wait_status, daemon, lambda s: s["queue"]["pending"] == 1)

        async def flood():
            for n in range(200):
                await async_write_event(SynthesizeChunk(text=f"word{n} ").event(), writer)

        sender = asyncio.create_task(flood())
        await asyncio.wait([sender], timeout=3.0)
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        writer.transport.abort()

    slowdown.set(50)
    try:
        run(go())
        slowdown.set(1)
        bridge.wait_log("connection ended", ended + 1, timeout=60)
        wait_status(daemon, lambda s: s["queue"]["pending"] == 0, 60)
    finally:
        slowdown.set(1)
    assert audio_of(run(ha_synthesize(bridge.port, "Still serving."))) == daemon_pcm(daemon, ["Still serving."])[0]


@pytest.mark.parametrize("leave, says", [
    ("nothing", "the daemon's socket is not there yet; requests wait for it"),
    ("stale", "the daemon's socket is left from a daemon that is not running; requests wait for a new one"),
    ("file", "the daemon's endpoint is not a socket: check server.endpoint"),
])
def test_the_bridge_says_at_start_what_is_at_the_daemons_socket(tmp_path, demo_cache, leave, says):
    import socket

    path = tmp_path / "tts.sock"
    if leave == "stale":  # bound and closed without unlinking: what a killed daemon leaves
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        sock.close()
    elif leave == "file":
        path.write_text("")
    proc = BridgeProcess(tmp_path, f"ipc://{path}", demo_cache)
    try:
        proc.wait_log(re.escape(says), timeout=30)
    finally:
        assert proc.stop() == 0, proc.log()

