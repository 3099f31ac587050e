"""systemd notification (sd_notify) for a Type=notify service.

Built on the sdnotify package's socket set-up (it handles abstract ``@`` socket
names), but sends UTF-8 itself: sdnotify 0.3.2 encodes Latin-1 and silently drops
any STATUS= holding another character (a voice called "Zoë" would do), and STATUS is
the line ``systemctl status`` shows.  Without NOTIFY_SOCKET (a terminal run) every
call is a no-op.
"""

from __future__ import annotations

import logging
import os
import threading

import sdnotify

log = logging.getLogger(__name__)

#: STATUS= is shown on one line; systemd itself truncates long ones.
MAX_STATUS_CHARS = 200


class Notifier(sdnotify.SystemdNotifier):
    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        super().__init__(debug=False)
        if self.enabled and self.socket is None:
            log.warning("NOTIFY_SOCKET is set but could not be connected; systemd will not see READY")
        self._lock = threading.Lock()
        self._last_status: str | None = None

    def notify(self, state: str) -> bool:  # type: ignore[override]
        if self.socket is None:
            return False
        try:
            with self._lock:
                self.socket.sendall(state.encode("utf-8", errors="replace"))
            return True
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)
            return False

    def extend_timeout(self, seconds: float) -> bool:
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def status(self, text: str) -> bool:
        line = _one_line(text)
        if line == self._last_status:
            return True
        self._last_status = line
        return self.notify(f"STATUS={line}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        # systemd >= 253 wants MONOTONIC_USEC with RELOADING=1 for Type=notify-reload;
        # older ones ignore the extra field.
        import time

        usec = int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1_000_000)
        return self.notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WatchdogSec), or None when the watchdog is off."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return max(int(usec) / 2_000_000, 0.05)
        except ValueError:
            return None


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_STATUS_CHARS else line[: MAX_STATUS_CHARS - 1] + "…"
