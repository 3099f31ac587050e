"""The bridge's side of the daemon: its voices, and the audio of a text.

Each Wyoming connection has its own :class:`Speaker`: a client of the daemon's ZeroMQ
socket (ishowtts_edge.client) used from one thread of its own, so that the asyncio loop
never blocks on the daemon and a ZeroMQ socket never changes threads.
:meth:`Speaker.speak` is the one place that knows how the daemon produces audio: one
streamed ``synthesize`` per text (docs/protocol.md, "Streaming"), whose audio is handed
on as each piece becomes final.  The daemon cuts the text into chunks with a short first
one, so the first audio comes after a short chunk's work whatever the length of the text.
Leaving the iteration early (the Wyoming peer has gone) abandons the stream, and the
daemon cancels it at its next sampling step.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from ishowtts_edge.client import AudioChunk, Client, ClientError, SynthesisStream
from ishowtts_edge.logs import kv
from ishowtts_edge.wyoming_bridge.sentences import pack_sentences

log = logging.getLogger("ishowtts_edge.wyoming")

T = TypeVar("T")

#: Home Assistant waits 1 s for the answer to describe; the voice list must come back sooner.
VOICES_TIMEOUT_S = 0.8
#: pcm_s16le: two bytes a sample.
SAMPLE_WIDTH = 2
#: The daemon's chunk plan for the bridge's streams (its default for a stream, named so that
#: the audio can be compared with a one-reply synthesize of the same text, seed and plan).
CHUNK_PLAN = "short_first"


@dataclass
class Audio:
    """One piece of an utterance: 16-bit little-endian PCM and its format."""

    pcm: bytes
    rate: int
    width: int
    channels: int


def _close(chunks: Generator[AudioChunk, None, None], stream: SynthesisStream) -> None:
    """On the client's thread: end the iteration and close the stream's socket (a no-op once ended)."""
    chunks.close()
    stream.close()


class Speaker:
    def __init__(self, endpoint: str, *, seed: int | None, max_chars: int, timeout_s: float) -> None:
        self.endpoint = endpoint
        self.seed = seed
        self.max_chars = max_chars
        self._client = Client(endpoint, timeout_s=timeout_s, retries=1, id_prefix="wyoming")
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wyoming-daemon")

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, functools.partial(fn, *args, **kwargs))

    async def voices(self) -> list[dict[str, Any]]:
        return await self._call(lambda: self._client.request("voices", timeout_s=VOICES_TIMEOUT_S, retry=False)[0]["voices"])

    async def speak(self, text: str, voice: str | None) -> AsyncIterator[Audio]:
        """The audio of ``text`` in order, piece by piece as the daemon makes it; raises ClientError
        with the daemon's code.  A text longer than the daemon takes is sent in sentence-aligned parts."""
        for part in pack_sentences(text, self.max_chars):
            stream = await self._call(
                self._client.stream, part, voice, format="pcm_s16le", seed=self.seed, chunk_plan=CHUNK_PLAN
            )
            chunks = iter(stream)
            try:
                while (chunk := await self._call(next, chunks, None)) is not None:
                    channels = int((stream.start or {}).get("channels", 1))
                    yield Audio(chunk.audio, stream.sample_rate, SAMPLE_WIDTH, channels)
            finally:
                # Normally a no-op (the stream has ended); when the peer has gone, the thread still
                # waiting for audio closes the stream and the daemon cancels it.
                stream.abandon()
                self._submit(functools.partial(_close, chunks, stream))
            end = stream.end or {}
            log.debug(
                "part spoken %s",
                kv(chars=len(part), audio_s=end.get("audio_seconds"), first_audio_s=end.get("first_audio_seconds"),
                   voice=voice),
            )

    def _submit(self, fn: Callable[[], Any]) -> None:
        try:
            self._thread.submit(fn)
        except RuntimeError:  # closed already: close() closed the client, and with it nothing is left
            pass

    def close(self) -> None:
        """Close the daemon client once the call in flight (if any) has returned; never waits for it."""
        self._submit(self._client.close)
        self._thread.shutdown(wait=False)


__all__ = ["Audio", "ClientError", "Speaker"]
