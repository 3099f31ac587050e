"""Log lines as journald reads them: a <N> prefix on every line, nothing from outside starts a line."""

from __future__ import annotations

import io
import logging

from ishowtts_edge.logs import SyslogPrefixFormatter, kv


def formatted(emit) -> list[str]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(SyslogPrefixFormatter())
    log = logging.getLogger("ishowtts_edge.server")
    log.addHandler(handler)
    try:
        emit(log)
    finally:
        log.removeHandler(handler)
    return stream.getvalue().rstrip("\n").split("\n")


def test_kv_escapes_control_characters_so_a_value_stays_on_its_line():
    assert kv(id="a\n<3>x", op="b\rc", t="\x1b[2J\u2028") == 'id=a\\n<3>x op=b\\rc t=\\x1b[2J\\u2028'


def test_every_line_of_a_traceback_carries_the_records_priority_and_cannot_pass_for_a_record():
    def emit(log):
        try:
            raise ValueError("bad input\n<2>daemon: forged\rline")
        except ValueError:
            log.error("request crashed %s", kv(id="r\n<2>daemon: forged"), exc_info=True)

    lines = formatted(emit)
    assert lines[0] == '<3>server: request crashed id="r\\n<2>daemon: forged"'
    assert all(line.startswith("<3>  ") for line in lines[1:]), lines
    assert lines[-1] == "<3>  <2>daemon: forged\\rline"
