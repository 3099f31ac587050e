"""The regular-expression helper both languages' rules are compiled with."""

from __future__ import annotations

import re


def compile_rule(pattern: str, first: str | None = None) -> re.Pattern[str]:
    """ASCII digits only: \\d would also match Arabic-Indic or Devanagari digits, which the spellers refuse.

    ``first``, a class of the characters a match can start with, is checked before the
    pattern's lookbehinds: without it ``re`` tries every alternative at every position
    (the phone pattern took 60 µs on a 300-character line, 11 µs with it).
    """
    if first is not None:
        pattern = f"(?={first})(?:{pattern})"
    return re.compile(pattern, re.ASCII)
