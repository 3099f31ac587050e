"""RTF monitoring: tell hardware drift apart from request mix, alert, and attribute a cause.

Raw RTF mixes two things: short texts pay fixed costs (so their RTF is high) and a
slowed GPU makes everything slower.  Each synthesis is therefore compared with a
*baseline* that predicts its time from its size (``a + b * frames * nfe`` per chunk,
frames being what the transformer ran on: reference + generated, padded), and the
monitor watches ``measured / expected`` instead of RTF.  That ratio is ~1.0 on a healthy
board whatever the texts are, so its spread and its median move only when the hardware does.

The baseline is learned from the first ``baseline_samples`` real requests seen while
telemetry says clocks are locked (a provisional one can be given with
:meth:`RtfMonitor.calibrate`; the daemon does not, as its warm-up runs carry first-call
costs such as autotuning and graph capture, and real requests do not).  The fit is Theil-Sen
(medians of pairwise slopes), so a few odd first calls do not bend it.  Learned from
one request size, the baseline cannot know the fixed cost per chunk; it then judges
only sizes near the ones it saw and is refit once a few requests of a new size arrive
(:meth:`BaselineLearner.widen`), instead of calling every short text slow.

One module per job, each importing only those below it:

- ``stats``: median, the jitter estimate, JSON without NaN.
- ``records``: :class:`SynthesisRecord`, one synthesis with its telemetry.
- ``baseline``: :class:`Baseline` (the fit) and :class:`BaselineLearner` (learning, widening).
- ``expectations``: what the board should be, and the cause a deviation points to.
- ``alerts``: :class:`Alert`, :class:`AlertEvent` and their wording in the journal.
- ``detector``: :class:`RtfMonitor`, the window, thresholds and raise/update/clear.
- ``remediation``: :class:`Remediator`, re-applying mode and clocks, then verifying.
- ``hub``: :class:`MonitorHub`, what the daemon talks to; it fans alerts out to the
  journal, the event publisher and the remediator.  The daemon owns threads and sockets.

Everything is plain Python, driven by explicit clocks, so tests replay recorded sequences
deterministically.  All of it logs as ``monitor`` in the journal.
"""

from .alerts import SEVERITIES, Alert, AlertEvent, log_event
from .baseline import Baseline, BaselineLearner
from .detector import RtfMonitor
from .expectations import CAUSES, HardwareExpectations
from .hub import EventSink, MonitorHub
from .records import SynthesisRecord
from .remediation import REMEDIABLE_CAUSES, Remediator

__all__ = [
    "CAUSES",
    "REMEDIABLE_CAUSES",
    "SEVERITIES",
    "Alert",
    "AlertEvent",
    "Baseline",
    "BaselineLearner",
    "EventSink",
    "HardwareExpectations",
    "MonitorHub",
    "Remediator",
    "RtfMonitor",
    "SynthesisRecord",
    "log_event",
]
