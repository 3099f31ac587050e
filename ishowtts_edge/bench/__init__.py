"""``ishowtts-edge bench``: upstream f5-tts, the engine in-process and the daemon over ZeroMQ, side by side.

One module per part: ``cli`` (options, the run), ``texts`` (what is synthesized),
``measure`` (timed series and their figures), ``context`` (checkpoint, config, machine),
``upstream``, ``engine`` and ``daemon`` (one section each), ``report`` (the printed
table), ``stats`` (summaries) and ``daemon_process`` (the daemon as a child process,
shared with the tests).  Nothing here imports torch until a section runs.  What each
figure means: docs/benchmarks.md.
"""
