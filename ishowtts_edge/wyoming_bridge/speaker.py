"""The bridge's side of the daemon: its voices, and the audio of a text.

Each Wyoming connection has its own :class:`Speaker`: a REQ client of the daemon's
ZeroMQ socket (ishowtts_edge.client, Lazy Pirate) used from one thread of its own, so
that the asyncio loop never blocks on the daemon and a ZeroMQ socket never changes
threads.  :meth:`Speaker.speak` is the one place that knows how the daemon produces
audio: today one ``synthesize`` per sentence (the daemon answers a request with the
whole utterance); a daemon that streams replaces only that method's body.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from ishowtts_edge.client import Client, ClientError
from ishowtts_edge.logs import kv
from ishowtts_edge.wyoming_bridge.sentences import split_sentences

log = logging.getLogger("ishowtts_edge.wyoming")

T = TypeVar("T")

#: Home Assistant waits 1 s for the answer to describe; the voice list must come back sooner.
VOICES_TIMEOUT_S = 0.8
#: pcm_s16le: two bytes a sample.
SAMPLE_WIDTH = 2


@dataclass
class Audio:
    """One piece of an utterance: 16-bit little-endian PCM and its format."""

    pcm: bytes
    rate: int
    width: int
    channels: int


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
        """The audio of ``text`` in order, piece by piece; raises ClientError with the daemon's code."""
        for sentence in split_sentences(text, self.max_chars):
            out = await self._call(self._client.synthesize, sentence, voice, format="pcm_s16le", seed=self.seed)
            channels = int(out.header.get("channels", 1))
            log.debug("sentence spoken %s", kv(chars=len(sentence), audio_s=out.header.get("audio_seconds"), voice=voice))
            yield Audio(out.audio, out.sample_rate, SAMPLE_WIDTH, channels)

    def close(self) -> None:
        """Close the daemon client once the call in flight (if any) has returned; never waits for it."""
        self._thread.submit(self._client.close)
        self._thread.shutdown(wait=False)


__all__ = ["Audio", "ClientError", "Speaker"]
