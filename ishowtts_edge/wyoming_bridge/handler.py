"""One Wyoming connection: events in, audio out (docs/home-assistant.md, "What the bridge speaks").

Events are read by :meth:`BridgeHandler.run` while a worker task handles them one at a
time, in order, so answers never interleave and a long synthesis does not stop the
bridge from seeing the peer leave: end of file or a reset cancels the worker, which
abandons the daemon's stream in flight (the daemon cancels it at its next sampling
step), and nothing more of the text is sent to the daemon.

Every request gets its terminator, errors included, because Home Assistant reads until
it: ``audio-stop`` after a ``synthesize``, ``synthesize-stopped`` after a stream.  An
``error`` event before the terminator says the audio is incomplete; the connection
stays usable.  Only a peer that breaks a limit of the connection itself (the framing, or
a stream's whole text: :class:`_StreamText`) gets its error without a terminator, and is
closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.ping import Ping, Pong
from wyoming.server import AsyncEventHandler
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped

from ishowtts_edge import __version__
from ishowtts_edge.client import ClientError
from ishowtts_edge.logs import kv
from ishowtts_edge.wyoming_bridge.framing import MAX_DATA_BYTES, FramingError, PeerClosed, read_sized_event
from ishowtts_edge.wyoming_bridge.sentences import SentenceSplitter
from ishowtts_edge.wyoming_bridge.speaker import Audio, Speaker

log = logging.getLogger("ishowtts_edge.wyoming")

#: Audio per audio-chunk event (wyoming-piper's default).
SAMPLES_PER_CHUNK = 1024
#: Events read ahead of the one being handled, and the bytes they may hold together (at least one
#: event of the largest size); past either the bridge stops reading (TCP back-pressure).  By
#: count alone, 64 events of 1 MiB each would let every connection hold 64 MiB.
QUEUE_EVENTS = 64
QUEUE_BYTES = 2 * MAX_DATA_BYTES
#: How long one event may wait for the peer to take it before the connection is dropped: a peer
#: that stops reading its audio would otherwise hold its connection (one of max_connections) for ever.
WRITE_STALL_S = 20.0
#: The longest voice name or language accepted (the daemon's request ids have the same bound).
MAX_VOICE_CHARS = 128
#: A request's whole text (a synthesize's, or a stream's chunks together) is at most this many times
#: the daemon's server.max_text_chars: the bridge sends a longer text in parts the daemon takes, and
#: without a bound on the parts one connection could keep the daemon speaking for ever.  16 x 2000
#: characters is about half an hour of speech, longer than any answer Home Assistant speaks.
MAX_TEXT_PARTS = 16
#: After refusing a peer, how long the bridge still reads (and drops) what it sends before closing:
#: closing with unread data makes the kernel answer with a reset, which can destroy the error event
#: before the peer has read it.
LINGER_S = 2.0
F5_TTS = Attribution(name="F5-TTS (SWivid)", url="https://github.com/SWivid/F5-TTS")
DEMO_DESCRIPTION = "demo (untrained model: noise, not speech)"


class BadEvent(Exception):
    """A well-framed event whose content is wrong: answered with an error, the connection stays."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class BridgeConfig:
    """What every connection shares: where the daemon is, how to speak, the last voice list seen."""

    endpoint: str
    seed: int | None
    max_chars: int
    timeout_s: float
    default_language: str
    max_connections: int
    connections: int = 0
    voices: list[dict[str, Any]] = field(default_factory=list)

    @property
    def max_request_chars(self) -> int:
        return self.max_chars * MAX_TEXT_PARTS

    def speaker(self) -> Speaker:
        return Speaker(self.endpoint, seed=self.seed, max_chars=self.max_chars, timeout_s=self.timeout_s)


def build_info(voices: list[dict[str, Any]], default_language: str) -> Info:
    tts_voices = [
        TtsVoice(
            name=voice["id"],
            attribution=F5_TTS,
            installed=bool(voice.get("available")),
            description=DEMO_DESCRIPTION if voice.get("source") == "demo" else voice["id"],
            version=None,
            languages=[voice.get("language") or default_language],
        )
        for voice in voices
    ]
    program = TtsProgram(
        name="ishowtts-edge",
        attribution=F5_TTS,
        installed=True,
        description="F5-TTS voice cloning (ishowtts-edge)",
        version=__version__,
        voices=tts_voices,
        supports_synthesize_streaming=True,
    )
    return Info(tts=[program])


def _text(data: dict[str, Any], event_type: str) -> str:
    text = data.get("text")
    if not isinstance(text, str):
        raise BadEvent("bad_request", f"{event_type} needs a text string")
    return text


def _voice(data: dict[str, Any], event_type: str) -> tuple[str | None, str | None]:
    """(name, language) asked for; a speaker is accepted and ignored (these voices have one each)."""
    voice = data.get("voice")
    if voice is None:
        return None, None
    if not isinstance(voice, dict):
        raise BadEvent("bad_request", f"{event_type}: voice must be an object")
    name, language = voice.get("name"), voice.get("language")
    if not isinstance(name, (str, type(None))) or not isinstance(language, (str, type(None))):
        raise BadEvent("bad_request", f"{event_type}: voice name and language must be strings")
    if len(name or "") > MAX_VOICE_CHARS or len(language or "") > MAX_VOICE_CHARS:
        # Both are logged and sent on to the daemon: a megabyte name must not become a megabyte log line.
        raise BadEvent("bad_request", f"{event_type}: voice name and language are at most {MAX_VOICE_CHARS} characters")
    return name or None, language or None


def _same_language(a: str, b: str) -> bool:
    a, b = a.replace("_", "-").lower(), b.replace("_", "-").lower()
    return a == b or a.split("-")[0] == b.split("-")[0]


class _Response:
    """The audio of one request: audio-start before the first piece, each piece sent at once, cut
    into audio-chunks of at most SAMPLES_PER_CHUNK (the daemon's pieces hold up to a second)."""

    def __init__(self, handler: "BridgeHandler") -> None:
        self.handler = handler
        self.started = False
        self.samples = 0
        self.rate = 0

    async def add(self, audio: Audio) -> None:
        if not self.started:
            await self.handler.write_event(AudioStart(rate=audio.rate, width=audio.width, channels=audio.channels).event())
            self.started, self.rate = True, audio.rate
        step = SAMPLES_PER_CHUNK * audio.width * audio.channels
        for offset in range(0, len(audio.pcm), step):
            piece = audio.pcm[offset : offset + step]
            await self.handler.write_event(
                AudioChunk(rate=audio.rate, width=audio.width, channels=audio.channels, audio=piece).event()
            )
        self.samples += len(audio.pcm) // (audio.width * audio.channels)

    @property
    def seconds(self) -> float:
        return self.samples / self.rate if self.rate else 0.0


class _StreamText:
    """Counts the text of the open stream as its events are read, before they are queued.

    The worker may speak far behind the reader, so counting at read time bounds what the
    connection holds (its queued chunks) as well as what it asks of the daemon.  A stream
    opens and closes here as it does in the worker: a start inside an open stream and a
    stop outside one are refused there and change nothing here.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.chars: int | None = None  # None: no stream open

    def read(self, event: Event) -> None:
        """Follow ``event``; FramingError ``text_too_long`` once the open stream's text is over the limit."""
        if SynthesizeStart.is_type(event.type):
            if self.chars is None:
                self.chars = 0
        elif SynthesizeStop.is_type(event.type):
            self.chars = None
        elif SynthesizeChunk.is_type(event.type) and self.chars is not None:
            text = event.data.get("text")
            self.chars += len(text) if isinstance(text, str) else 0
            if self.chars > self.limit:
                raise FramingError(
                    "text_too_long", f"the stream's text is over {self.limit} characters "
                    f"({MAX_TEXT_PARTS} x the daemon's server.max_text_chars)")


@dataclass
class _Stream:
    """A synthesize-start ... synthesize-stop in progress."""

    voice: str | None
    splitter: SentenceSplitter
    response: _Response
    failed: bool = False
    chars: int = 0


class BridgeHandler(AsyncEventHandler):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, config: BridgeConfig) -> None:
        super().__init__(reader, writer)
        self.config = config
        self.speaker = config.speaker()
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else "?"
        self._queue: asyncio.Queue[tuple[Event, int]] = asyncio.Queue(QUEUE_EVENTS)
        self._queued_bytes = 0
        self._dequeued = asyncio.Event()
        self._stream: _Stream | None = None
        self._stream_text = _StreamText(config.max_request_chars)
        #: monotonic time since which the connection has only been waiting for the peer's next
        #: event (nothing queued, nothing being answered); None while it works.  At the cap, the
        #: connection idle the longest gives way to a new one (__main__).
        self.idle_since: float | None = time.monotonic()
        self._end_reason: str | None = None

    def evict(self, reason: str) -> None:
        """End this connection now (from another connection's task): the reader sees it closed."""
        self._end_reason = reason
        self.writer.transport.abort()

    # -- reading ------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Read events until the peer leaves or breaks the framing; the worker answers them."""
        worker = asyncio.create_task(self._work(), name=f"wyoming {self.peer}")
        reason = "closed"
        try:
            while not worker.done():
                try:
                    event, size = await read_sized_event(self.reader)
                    if event is not None:
                        self._stream_text.read(event)
                except FramingError as exc:
                    reason = f"refused: {exc.code}"
                    log.warning("connection closed %s", kv(peer=self.peer, code=exc.code, reason=exc.message))
                    worker.cancel()
                    await asyncio.gather(worker, return_exceptions=True)
                    await self._send_error(exc.code, exc.message)
                    await self._linger()
                    break
                except (PeerClosed, ConnectionError) as exc:
                    reason = self._end_reason or f"lost: {exc}"
                    break
                if event is None:
                    reason = self._end_reason or reason
                    break
                self.idle_since = None
                await self._enqueue(event, size, worker)
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            self.speaker.close()
            log.info("connection ended %s", kv(peer=self.peer, how=reason))
            self.writer.close()

    async def _linger(self) -> None:
        """Say we are done (end of file), then drop what the peer still sends until it closes too
        or LINGER_S pass, so that the close is not a reset (see LINGER_S)."""
        try:
            if self.writer.can_write_eof():
                self.writer.write_eof()
            await asyncio.wait_for(self._discard_input(), LINGER_S)
        except (asyncio.TimeoutError, ConnectionError, OSError):
            pass

    async def _discard_input(self) -> None:
        while await self.reader.read(64 * 1024):
            pass

    async def _enqueue(self, event: Event, size: int, worker: asyncio.Task) -> None:
        """Queue ``event`` once the events ahead of it leave room for it (QUEUE_EVENTS, QUEUE_BYTES);
        drop it when the worker has ended (it could no longer take it, and the connection is ending)."""
        while not worker.done() and (
                self._queue.full() or (self._queued_bytes and self._queued_bytes + size > QUEUE_BYTES)):
            self._dequeued.clear()
            await self._dequeued.wait()
        if worker.done():
            return
        self._queued_bytes += size
        self._queue.put_nowait((event, size))

    async def _work(self) -> None:
        try:
            await self._answer_events()
        finally:
            self._dequeued.set()  # a reader waiting for room sees the worker gone

    async def _answer_events(self) -> None:
        while True:
            if self._queue.empty():
                self.idle_since = time.monotonic()
            event, size = await self._queue.get()
            self._queued_bytes -= size
            self._dequeued.set()
            self.idle_since = None
            try:
                await self.handle_event(event)
            except BadEvent as exc:
                await self._send_error(exc.code, exc.message)
            except (ConnectionError, asyncio.CancelledError):
                raise
            except Exception:
                log.exception("unexpected error %s", kv(peer=self.peer, event=event.type))
                await self._send_error("internal", "unexpected error in the bridge (logged)")

    async def write_event(self, event: Event) -> None:
        """Send ``event``; a peer that takes none of it for WRITE_STALL_S loses its connection."""
        try:
            await asyncio.wait_for(super().write_event(event), WRITE_STALL_S)
        except asyncio.TimeoutError:
            log.warning("peer stopped reading; connection dropped %s", kv(peer=self.peer, waited_s=WRITE_STALL_S))
            self.evict("dropped: not reading")
            raise ConnectionError("the peer stopped reading") from None

    async def _send_error(self, code: str, message: str) -> None:
        try:
            await self.write_event(Error(text=f"{code}: {message}", code=code).event())
        except ConnectionError:
            pass

    # -- events -------------------------------------------------------------------------------------

    async def handle_event(self, event: Event) -> bool:
        if Describe.is_type(event.type):
            await self._describe()
        elif Synthesize.is_type(event.type):
            if self._stream is not None:
                # Home Assistant resends the whole text as a plain synthesize inside its stream, for
                # servers without streaming; the stream already speaks it.
                log.debug("full-text synthesize inside a stream ignored %s", kv(peer=self.peer))
            else:
                await self._synthesize(event.data)
        elif SynthesizeStart.is_type(event.type):
            await self._stream_start(event.data)
        elif SynthesizeChunk.is_type(event.type):
            await self._stream_chunk(event.data)
        elif SynthesizeStop.is_type(event.type):
            await self._stream_stop()
        elif Ping.is_type(event.type):
            text = event.data.get("text")
            await self.write_event(Pong(text=text if isinstance(text, str) and len(text) <= 256 else None).event())
        else:
            # Wyoming peers drop events they do not know (a newer client may send some).
            log.debug("event ignored %s", kv(peer=self.peer, type=ascii(event.type)))
        return True

    async def _describe(self) -> None:
        try:
            voices = await self.speaker.voices()
        except ClientError as exc:
            if not self.config.voices:
                log.warning("no voice list for describe %s", kv(peer=self.peer, code=exc.code))
                raise BadEvent(exc.code, f"the daemon did not list its voices: {exc.message}") from None
            log.warning("daemon did not list voices; describing the last list seen %s", kv(code=exc.code))
            voices = self.config.voices
        else:
            if not any(v.get("available") for v in voices):
                raise BadEvent("not_ready", "the daemon has no usable voice yet (it is loading, or none is configured)")
            self.config.voices = voices
        await self.write_event(build_info(voices, self.config.default_language).event())

    async def _pick_voice(self, name: str | None, language: str | None) -> str | None:
        """A named voice is the daemon's to check; a language alone picks the first voice that speaks it."""
        if name is not None or language is None:
            return name
        try:
            voices = await self.speaker.voices()
        except ClientError:
            voices = self.config.voices
        for voice in voices:
            if voice.get("available") and _same_language(voice.get("language") or self.config.default_language, language):
                return voice["id"]
        return None  # the daemon's default voice

    async def _speak(self, text: str, voice: str | None, response: _Response) -> bool:
        """Speak ``text`` into ``response``; False once an error has been sent for it."""
        try:
            # aclosing: a failed write to a peer that has gone ends the daemon's stream now, not at
            # garbage collection.
            async with aclosing(self.speaker.speak(text, voice)) as pieces:
                async for audio in pieces:
                    await response.add(audio)
        except ClientError as exc:
            log.warning("synthesis failed %s", kv(peer=self.peer, code=exc.code, voice=voice))
            await self._send_error(exc.code, exc.message)
            return False
        return True

    async def _synthesize(self, data: dict[str, Any]) -> None:
        response = _Response(self)
        text, voice, ok = "", None, False
        try:  # a malformed text or voice is answered like every other error: error, then audio-stop
            text = _text(data, "synthesize")
            voice = await self._pick_voice(*_voice(data, "synthesize"))
        except BadEvent as exc:
            await self._send_error(exc.code, exc.message)
        else:
            if not text.strip():
                await self._send_error("bad_request", "synthesize: the text is empty")
            elif len(text) > self.config.max_request_chars:
                await self._send_error("text_too_long", f"synthesize: the text has {len(text)} characters; the limit is "
                                       f"{self.config.max_request_chars} ({MAX_TEXT_PARTS} x the daemon's server.max_text_chars)")
            else:
                ok = await self._speak(text, voice, response)
        await self.write_event(AudioStop().event())
        log.info("synthesized %s", kv(peer=self.peer, chars=len(text), audio_s=round(response.seconds, 2), voice=voice, ok=ok))

    async def _stream_start(self, data: dict[str, Any]) -> None:
        if self._stream is not None:
            raise BadEvent("bad_request", "synthesize-start inside an open stream (send synthesize-stop first)")
        try:
            voice, failed = await self._pick_voice(*_voice(data, "synthesize-start")), False
        except BadEvent as exc:
            # The stream is open all the same, failed: its chunks are dropped and its stop still
            # gets synthesize-stopped, which Home Assistant waits for.
            await self._send_error(exc.code, exc.message)
            voice, failed = None, True
        self._stream = _Stream(voice, SentenceSplitter(self.config.max_chars), _Response(self), failed=failed)

    async def _stream_chunk(self, data: dict[str, Any]) -> None:
        stream = self._stream
        if stream is None:
            raise BadEvent("bad_request", "synthesize-chunk outside a stream (send synthesize-start first)")
        text = _text(data, "synthesize-chunk")
        stream.chars += len(text)
        if stream.failed:
            return
        for sentence in stream.splitter.add(text):
            if not await self._speak(sentence, stream.voice, stream.response):
                stream.failed = True
                return

    async def _stream_stop(self) -> None:
        stream = self._stream
        if stream is None:
            raise BadEvent("bad_request", "synthesize-stop outside a stream")
        self._stream = None
        if not stream.failed:
            for sentence in stream.splitter.finish():
                if not await self._speak(sentence, stream.voice, stream.response):
                    stream.failed = True
                    break
        if stream.response.started:
            await self.write_event(AudioStop().event())
        await self.write_event(SynthesizeStopped().event())
        log.info(
            "stream synthesized %s",
            kv(peer=self.peer, chars=stream.chars, audio_s=round(stream.response.seconds, 2), voice=stream.voice, ok=not stream.failed),
        )
