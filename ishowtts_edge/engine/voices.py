"""Reference voices: configured ones, the demo voice and request-supplied (ad-hoc) ones.

Preparing a voice (decode, clip, resample, mel, text tokens) costs far more than a
synthesis step, so each is prepared once and cached under a hash of its content
(audio bytes + transcript).  Configured voices are files an operator may edit while
the daemon runs for months: every use compares the files' mtime and size, and only
when those moved is the content re-hashed (a touch without a change re-uses the
cached preparation).  Ad-hoc voices live in a bounded LRU keyed by the same hash.
A broken configured voice is listed as unavailable; it never stops the daemon.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ishowtts_edge.config import VoiceConfig
from ishowtts_edge.engine.reference import TRIM_ADVICE
from ishowtts_edge.logs import kv
from ishowtts_edge.protocol import ErrorCode, ServiceError, peer_repr

log = logging.getLogger(__name__)

DEMO_VOICE_ID = "demo"
#: The demo voice's transcript (engine/demo.py) is English.
DEMO_VOICE_LANGUAGE = "en"
#: Largest voice file read at all: 120 s (the decode limit) of 48 kHz stereo 32-bit WAV is
#: 46 MB; a file much larger is read whole for its hash, so it is refused by its size first.
MAX_VOICE_FILE_BYTES = 64 << 20


@dataclass
class PreparedVoice:
    """What the sampler needs from a reference; ``payload`` is the engine's (mel, tokens...)."""

    content_hash: str
    ref_text: str  # the transcript as given (stripped)
    ref_seconds: float  # after clipping, at the file's own rate
    payload: Any = None


#: (audio bytes, transcript, label for messages) -> PreparedVoice; raises ServiceError(BAD_REFERENCE).
Preparer = Callable[[bytes, str, str], PreparedVoice]


def content_hash(audio: bytes, ref_text: str) -> str:
    digest = hashlib.sha256(audio)
    digest.update(b"\0")
    digest.update(ref_text.encode("utf-8"))
    return digest.hexdigest()


@dataclass
class _VoiceSource:
    """Where a configured voice lives on disk."""

    audio_path: Path
    text_path: Path | None  # None: the transcript is inline
    inline_text: str | None
    source: str  # "config" | "demo"
    language: str | None = None

    @classmethod
    def from_config(cls, config: VoiceConfig) -> "_VoiceSource":
        if config.dir is not None:
            return cls(config.dir / "ref.wav", config.dir / "ref.txt", None, "config", config.language)
        return cls(config.ref_audio, None, config.ref_text, "config", config.language)  # type: ignore[arg-type]

    def signature(self) -> tuple:
        """mtime/size of the files: a cheap "did anything change" check."""
        parts: list[Any] = []
        for path in (self.audio_path, self.text_path):
            if path is None:
                continue
            try:
                st = path.stat()
                parts.append((st.st_mtime_ns, st.st_size))
            except OSError as exc:
                parts.append(("missing", type(exc).__name__))
        return tuple(parts)

    def read(self, voice_id: str) -> tuple[bytes, str]:
        try:
            size = self.audio_path.stat().st_size
            if size > MAX_VOICE_FILE_BYTES:
                raise ServiceError(
                    ErrorCode.BAD_REFERENCE,
                    f"voice {voice_id}: {self.audio_path} is {size >> 20} MiB; "
                    f"the limit is {MAX_VOICE_FILE_BYTES >> 20} MiB ({TRIM_ADVICE})",
                )
            audio = self.audio_path.read_bytes()
        except OSError as exc:
            raise ServiceError(
                ErrorCode.BAD_REFERENCE, f"voice {voice_id}: cannot read {self.audio_path}: {exc.strerror or exc}"
            ) from None
        if self.text_path is not None:
            try:
                text = self.text_path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ServiceError(
                    ErrorCode.BAD_REFERENCE, f"voice {voice_id}: cannot read {self.text_path}: {exc}"
                ) from None
        else:
            text = self.inline_text or ""
        text = text.strip()
        if not text:
            where = self.text_path or "ref_text"
            raise ServiceError(ErrorCode.BAD_REFERENCE, f"voice {voice_id}: the transcript ({where}) is empty")
        return audio, text


@dataclass
class _Entry:
    voice_id: str
    where: _VoiceSource
    signature: tuple | None = None
    prepared: PreparedVoice | None = None
    error: str | None = None
    stats: dict[str, int] = field(default_factory=lambda: {"prepared": 0, "rehashed": 0})


class VoiceRegistry:
    """Voice id -> prepared reference, plus the ad-hoc LRU.  Thread-safe."""

    def __init__(self, prepare: Preparer, adhoc_capacity: int) -> None:
        self._prepare = prepare
        self._adhoc_capacity = adhoc_capacity
        self._entries: dict[str, _Entry] = {}
        self._adhoc: OrderedDict[str, PreparedVoice] = OrderedDict()
        self._lock = threading.RLock()
        self.adhoc_stats = {"hits": 0, "misses": 0, "evictions": 0}

    # -- configured voices --------------------------------------------------------------------

    def configure(self, voices: dict[str, VoiceConfig], demo_dir: Path | None = None) -> None:
        """(Re)build the registry; prepared content whose hash is unchanged is kept."""
        known = {e.prepared.content_hash: e.prepared for e in self._entries.values() if e.prepared}
        entries: dict[str, _Entry] = {}
        for voice_id, config in voices.items():
            entries[voice_id] = _Entry(voice_id, _VoiceSource.from_config(config))
        if demo_dir is not None and DEMO_VOICE_ID not in entries:
            entries[DEMO_VOICE_ID] = _Entry(
                DEMO_VOICE_ID, _VoiceSource(demo_dir / "ref.wav", demo_dir / "ref.txt", None, "demo", DEMO_VOICE_LANGUAGE)
            )
        for entry in entries.values():
            try:
                self._refresh(entry, known)
            except ServiceError as exc:
                log.error("voice unavailable %s", kv(voice=entry.voice_id, reason=exc.message))
        with self._lock:
            self._entries = entries
        ready = sum(1 for e in entries.values() if e.prepared)
        log.info("voices loaded %s", kv(available=ready, unavailable=len(entries) - ready))

    def _refresh(self, entry: _Entry, known: dict[str, PreparedVoice] | None = None) -> PreparedVoice:
        """Re-read the files if their mtime/size moved; re-prepare only if the content did."""
        signature = entry.where.signature()
        if signature == entry.signature:
            if entry.prepared is not None:
                return entry.prepared
            raise ServiceError(ErrorCode.BAD_REFERENCE, f"voice {entry.voice_id} is unavailable: {entry.error}")
        entry.signature = signature
        try:
            audio, text = entry.where.read(entry.voice_id)
            digest = content_hash(audio, text)
            entry.stats["rehashed"] += 1
            if entry.prepared is not None and entry.prepared.content_hash == digest:
                entry.error = None
                return entry.prepared
            cached = (known or {}).get(digest)
            if cached is None:
                cached = self._prepare(audio, text, f"voice {entry.voice_id}")
                cached.content_hash = digest
                entry.stats["prepared"] += 1
            entry.prepared, entry.error = cached, None
            return cached
        except ServiceError as exc:
            entry.prepared, entry.error = None, exc.message
            raise

    def check(self, voice_id: str) -> None:
        """Raise UNKNOWN_VOICE for a voice that is not configured (cheap: no files are read)."""
        with self._lock:
            self._entry(voice_id)

    def _entry(self, voice_id: str) -> "_Entry":
        entry = self._entries.get(voice_id)
        if entry is None:
            known = ", ".join(sorted(self._entries)) or "none"
            raise ServiceError(ErrorCode.UNKNOWN_VOICE, f"unknown voice {peer_repr(voice_id)} (configured: {known})")
        return entry

    def get(self, voice_id: str) -> PreparedVoice:
        with self._lock:
            entry = self._entry(voice_id)
            before = entry.prepared
            prepared = self._refresh(entry)
            if prepared is not before:
                log.info("voice re-read after its files changed %s", kv(voice=voice_id))
            return prepared

    def entry_stats(self, voice_id: str) -> dict[str, int]:
        return dict(self._entries[voice_id].stats)

    # -- ad-hoc voices --------------------------------------------------------------------------

    def adhoc(self, audio: bytes, ref_text: str) -> PreparedVoice:
        text = ref_text.strip()
        if not text:
            raise ServiceError(ErrorCode.BAD_REFERENCE, "ref_text (the reference transcript) is empty")
        digest = content_hash(audio, text)
        with self._lock:
            cached = self._adhoc.get(digest)
            if cached is not None:
                self._adhoc.move_to_end(digest)
                self.adhoc_stats["hits"] += 1
                return cached
        self.adhoc_stats["misses"] += 1
        prepared = self._prepare(audio, text, "reference audio")
        prepared.content_hash = digest
        if self._adhoc_capacity > 0:
            with self._lock:
                self._adhoc[digest] = prepared
                while len(self._adhoc) > self._adhoc_capacity:
                    self._adhoc.popitem(last=False)
                    self.adhoc_stats["evictions"] += 1
        return prepared

    def adhoc_cached(self) -> int:
        return len(self._adhoc)

    # -- listing ----------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def available(self) -> int:
        return sum(1 for e in self._entries.values() if e.prepared is not None)

    def list(self) -> list[dict[str, Any]]:
        out = []
        with self._lock:
            for voice_id in sorted(self._entries):
                entry = self._entries[voice_id]
                item: dict[str, Any] = {
                    "id": voice_id,
                    "ref_text": entry.prepared.ref_text if entry.prepared else None,
                    "ref_seconds": round(entry.prepared.ref_seconds, 3) if entry.prepared else None,
                    "source": entry.where.source,
                    "language": entry.where.language,
                    "available": entry.prepared is not None,
                }
                if entry.error:
                    item["error"] = entry.error
                out.append(item)
        return out
