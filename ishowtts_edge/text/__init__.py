"""The text front end: numbers, dates, times, money, units and abbreviations said as words.

F5-TTS reads characters, so "4:30", "$19.99" or "3月5日" come out as guesses.  The engine
passes every request's text through :func:`normalize` before chunking and tokenising
(unless the request says ``"normalize": false``), so the chunker, the duration estimate
and the model all see the spoken form.

The text is split into English and Chinese spans by script (:func:`split_spans`); each
span goes to its language's rules (:mod:`.english`, :mod:`.chinese`).  Digits and
symbols belong to the script around them: "3月5日" is Chinese, "May 5" English.
"""

from __future__ import annotations

import logging
import re

from ..logs import kv
from . import chinese, english

log = logging.getLogger(__name__)

__all__ = ["normalize", "split_spans"]

_FULLWIDTH = {ord("０") + i: ord("0") + i for i in range(10)} | {ord("％"): ord("%"), ord("＄"): ord("$"),
                                                               ord("＋"): ord("+"), ord("－"): ord("-")}

# Han ideographs, CJK punctuation and fullwidth forms.
_HAN = "\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
_LATIN = "A-Za-z\u00c0-\u024f"
#: A unit symbol glued to a number ("3kg", "25°C") is part of the number, not an English word.
_UNIT_AFTER_NUMBER = re.compile(
    r"(?<=\d)\s?(?:" + "|".join(re.escape(u) for u in chinese.UNIT_SYMBOLS) + r")(?![A-Za-z])", re.ASCII
)
_HAN_RE = re.compile(f"[{_HAN}]")
_LATIN_RE = re.compile(f"[{_LATIN}]")
#: A Chinese stretch: Han to Han with no Latin letter between; an English one likewise.
_RUNS = re.compile(rf"([{_HAN}](?:[^{_LATIN}]*[{_HAN}])?)|([{_LATIN}](?:[^{_HAN}]*[{_LATIN}])?)|([^{_HAN}{_LATIN}]+)")
_CLAUSE_END = re.compile(r"[,.;:!?，。；：！？、](?!\d)")


def split_spans(text: str) -> list[tuple[str, str]]:
    """``text`` as consecutive ("en" | "zh", span) pairs whose concatenation is ``text``.

    Letters decide: Han is "zh", Latin is "en".  A run of digits and symbols joins its
    neighbours' language; between a Chinese and an English neighbour it is cut after its
    last clause mark ("paid $5, 我..." keeps "$5," English), else it goes to the side it
    touches without a space, and to Chinese when that does not decide.  Text with no
    letters at all is English.
    """
    if not _HAN_RE.search(text):
        return [("en", text)]
    if not _LATIN_RE.search(text):
        return [("zh", text)]
    masked = _UNIT_AFTER_NUMBER.sub(lambda m: "\0" * len(m.group(0)), text)  # same length, no letters
    runs: list[list[str]] = []  # [language or "", text]
    for match in _RUNS.finditer(masked):
        lang = "zh" if match.group(1) else "en" if match.group(2) else ""
        runs.append([lang, text[match.start():match.end()]])
    for i, run in enumerate(runs):
        if run[0]:
            continue
        left = runs[i - 1][0] if i > 0 else ""
        right = runs[i + 1][0] if i + 1 < len(runs) else ""
        if not left or not right or left == right:
            run[0] = left or right or "en"
            continue
        cut = None
        for mark in _CLAUSE_END.finditer(run[1]):
            cut = mark.end()
        if cut is not None:  # split it: the part up to the clause mark goes left
            runs.insert(i + 1, [right, run[1][cut:]])
            run[0], run[1] = left, run[1][:cut]
            continue
        touches_left, touches_right = not run[1][:1].isspace(), not run[1][-1:].isspace()
        if touches_left != touches_right:
            run[0] = left if touches_left else right
        else:
            run[0] = "zh"
    spans: list[tuple[str, str]] = []
    for lang, piece in runs:
        if not piece:
            continue
        if spans and spans[-1][0] == lang:
            spans[-1] = (lang, spans[-1][1] + piece)
        else:
            spans.append((lang, piece))
    return spans


def normalize_strict(text: str) -> str:
    """:func:`normalize` without its safety net: raises if a rule has a bug (tests use it)."""
    text = text.translate(_FULLWIDTH)
    return "".join(
        english.normalize(span) if lang == "en" else chinese.normalize(span) for lang, span in split_spans(text)
    )


def normalize(text: str) -> str:
    """``text`` as it should be said: numbers, dates, times, money, units and abbreviations in words.

    Deterministic, and text with nothing to rewrite comes back unchanged.  A rule that
    fails on some input (a bug) must not fail the request: the text is then spoken as
    given, and the failure logged without the text.
    """
    try:
        return normalize_strict(text)
    except Exception as exc:  # noqa: BLE001 - any bug in a rule; the request goes on with the text as given
        log.warning("text normalisation failed; speaking the text as given %s",
                    kv(chars=len(text), error=type(exc).__name__))
        return text
