"""Progress reports while loading and warming up, kept coming during one long step.

A max-autotune compile of one bucket can take minutes; systemd's start timeout is
extended only as long as the daemon keeps reporting (``EXTEND_TIMEOUT_USEC``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)

#: Called with a short message ("loading vocoder", "warming up 512 frames (12 s)").
Progress = Callable[[str], None]

#: Seconds between progress calls while one long step (a compile, a model load) runs.
HEARTBEAT_S = 5.0


def no_progress(_: str) -> None:
    """The progress callback of a caller that does not listen."""


@contextlib.contextmanager
def heartbeat(progress: Progress, message: str) -> Iterator[None]:
    """Call ``progress`` now and then every few seconds from a helper thread until the step ends."""
    stop = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                progress(f"{message} ({time.monotonic() - started:.0f} s)")
            except Exception:  # a failing callback must not kill the heartbeat silently
                log.exception("progress callback failed")

    progress(message)
    thread = threading.Thread(target=beat, name="engine-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
