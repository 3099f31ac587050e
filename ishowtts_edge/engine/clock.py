"""Clock emulation for tests and demos: make synthesis slow down like a down-clocked GPU.

There is no GPU on the CI machine, yet the RTF-drift monitor must be tested end to
end: fake nvpmodel/jetson_clocks lower a fake devfreq ``cur_freq`` and the daemon
must notice RTF degrade.  With ``engine.emulate_clock_devfreq`` set, every ODE step
is followed by a sleep of ``step_time * (max_freq / cur_freq - 1)``, so a step at
half clock takes twice as long, as compute-bound work on the real GPU would.
Testing/demo only: never set it on a real board.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ishowtts_edge.logs import kv

log = logging.getLogger(__name__)


class ClockEmulator:
    def __init__(self, devfreq_dir: Path, sleep=time.sleep) -> None:
        self.devfreq_dir = devfreq_dir
        self._sleep = sleep
        self._warned = False
        self.total_delay_s = 0.0

    def slowdown(self) -> float:
        """max/cur - 1 from the devfreq files; 0 when they are unreadable or not lowered."""
        try:
            cur = int((self.devfreq_dir / "cur_freq").read_text().split()[0])
            top = int((self.devfreq_dir / "max_freq").read_text().split()[0])
        except (OSError, ValueError, IndexError) as exc:
            if not self._warned:
                log.warning("clock emulation cannot read devfreq %s", kv(dir=self.devfreq_dir, error=exc))
                self._warned = True
            return 0.0
        if cur <= 0 or top <= cur:
            return 0.0
        return top / cur - 1.0

    def after_step(self, step_seconds: float) -> None:
        delay = step_seconds * self.slowdown()
        if delay > 0:
            self.total_delay_s += delay
            self._sleep(delay)
