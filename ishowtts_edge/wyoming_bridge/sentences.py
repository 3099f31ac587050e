"""Splitting text into sentences as it arrives, so that each can be spoken as soon as it is complete,
and a complete text longer than the daemon takes into parts of whole sentences.

A sentence ends at ``. ! ? …`` (with any closing quotes or brackets) followed by white
space, at CJK full stops, or at a blank line.  Text that runs longer than ``max_chars``
without an end is cut at its last space before the limit, so the pending text stays
bounded whatever a client sends.  Pieces holding no word character ("...", "?!") are
dropped: the daemon would only speak noise for them.
"""

from __future__ import annotations

import re

_BOUNDARY = re.compile(r"""[.!?…]+["'”’»)\]]*(?=\s)|[。！？]+["'”’」』)\]]*|\n[ \t]*\n""")
_WORD = re.compile(r"\w")


def _clean(piece: str) -> str | None:
    text = " ".join(piece.split())
    return text if _WORD.search(text) else None


class SentenceSplitter:
    """Feed text with :meth:`add`, get the sentences completed so far; :meth:`finish` returns the rest."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max(1, max_chars)
        self._pending = ""

    def add(self, text: str) -> list[str]:
        self._pending += text
        out: list[str] = []
        while True:
            match = _BOUNDARY.search(self._pending)
            if match is not None and match.end() <= self.max_chars:
                piece, self._pending = self._pending[: match.end()], self._pending[match.end() :]
            elif len(self._pending) > self.max_chars:
                piece, self._pending = self._cut()
            else:
                break
            sentence = _clean(piece)
            if sentence:
                out.append(sentence)
        return out

    def finish(self) -> list[str]:
        out = self.add("")
        while self._pending:
            piece, self._pending = self._cut() if len(self._pending) > self.max_chars else (self._pending, "")
            sentence = _clean(piece)
            if sentence:
                out.append(sentence)
        return out

    def _cut(self) -> tuple[str, str]:
        head = self._pending[: self.max_chars]
        space = max(head.rfind(" "), head.rfind("\n"), head.rfind("\t"))
        at = space + 1 if space > 0 else self.max_chars
        return self._pending[:at], self._pending[at:]


def split_sentences(text: str, max_chars: int) -> list[str]:
    """Every sentence of a complete text."""
    splitter = SentenceSplitter(max_chars)
    return splitter.add(text) + splitter.finish()


def pack_sentences(text: str, max_chars: int) -> list[str]:
    """``text`` as the daemon's requests: itself when it fits in ``max_chars`` (the daemon chunks it
    by sentence), else its sentences joined into parts of at most ``max_chars``."""
    if len(text) <= max_chars:
        return [text] if _WORD.search(text) else []
    parts: list[str] = []
    for sentence in split_sentences(text, max_chars):
        if parts and len(parts[-1]) + 1 + len(sentence) <= max_chars:
            parts[-1] += " " + sentence
        else:
            parts.append(sentence)
    return parts
