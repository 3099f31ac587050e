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


class SyslogPrefixFormatter(logging.Formatter):
    """``<4>component: message`` with every continuation line prefixed too."""

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{syslog_priority(record.levelno)}>"
        name = record.name.removeprefix("ishowtts_edge.")
        text = f"{name}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return "\n".join(prefix + line for line in text.splitlines() or [""])


def kv(**fields: object) -> str:
    """Render fields as ``key=value`` pairs; values with spaces are quoted."""
    parts = []
    for key, value in fields.items():
        if isinstance(value, float):
            text = f"{value:.4g}"
        else:
            text = str(value)
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
