"""Logging to stderr with syslog priority prefixes.

journald (SyslogLevelPrefix=yes, the default) turns a leading ``<N>`` into the
record's priority, so ``journalctl -u ishowtts-edge -p warning`` shows warnings and
alerts.  Timestamps are left to journald; a terminal run still reads fine.
Structured facts go in ``key=value`` form (see :func:`kv`) so they can be grepped.
"""

from __future__ import annotations

import logging
import sys

_PRIORITY = {
    logging.CRITICAL: 2,  # crit
    logging.ERROR: 3,  # err
    logging.WARNING: 4,  # warning
    logging.INFO: 6,  # info
    logging.DEBUG: 7,  # debug
}


def syslog_priority(levelno: int) -> int:
    for level in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= level:
            return _PRIORITY[level]
    return _PRIORITY[logging.DEBUG]


#: Control characters (C0, DEL, C1) and the Unicode line and paragraph separators, as escapes:
#: a peer's "\n<3>..." must not start a line of its own, and a "\r" or a terminal escape
#: must not rewrite what a terminal shows.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x2028: "\\u2028", 0x2029: "\\u2029"})
_ESCAPES_BUT_NEWLINE = {code: text for code, text in _ESCAPES.items() if code != 0x0A}


def escape(text: str) -> str:
    """``text`` on one line: every control character written as its escape."""
    return text.translate(_ESCAPES)


class SyslogPrefixFormatter(logging.Formatter):
    """``<4>component: message``; each continuation line carries the prefix too, and is indented.

    Only newlines split a record (tracebacks, multi-line config errors); every other control
    character is escaped wherever it comes from, and a continuation line always starts with
    whitespace after the prefix, so nothing inside a record reads as a record of its own.
    Values a peer sends go through :func:`kv`, which escapes newlines as well.
    """

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        name = record.name.removeprefix("ishowtts_edge.")
        text = f"{name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        first, *rest = text.translate(_ESCAPES_BUT_NEWLINE).rstrip("\n").split("\n")
        lines = [prefix + first]
        lines.extend(prefix + (line if not line or line[0] == " " else "  " + line) for line in rest)
        return "\n".join(lines)


def kv(**fields: object) -> str:
    """Render fields as ``key=value`` pairs; values with spaces are quoted, control characters escaped."""
    parts = []
    for key, value in fields.items():
        if isinstance(value, float):
            text = f"{value:.4g}"
        else:
            text = escape(str(value))
        if not text or any(ch in text for ch in ' "='):
            text = '"' + text.replace('"', "'") + '"'
        parts.append(f"{key}={text}")
    return " ".join(parts)


def setup_logging(level: str = "info", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(SyslogPrefixFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party chatter (torch inductor autotuning, numba) stays at warning.
    for noisy in ("torch", "numba", "matplotlib", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
