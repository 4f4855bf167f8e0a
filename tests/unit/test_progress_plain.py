"""Plain (CI) output says what runs: a step's timestamped stage line comes before the step's
output (or once the step has run ``stage_after`` seconds silently), and a silent step gets
``... still running`` heartbeats. A build on the fake target (real sleeps in its INIT and
in a slow base) with a plain Reporter writing to a buffer."""

from __future__ import annotations

import io
import re
import time

from amic.engine.build import BuildOptions, build
from amic.engine.progress import Reporter, heartbeat_seconds

from tests.harness.fake import FakeTarget

AMIFILE = """\
FROM debian:12

SERVICE quick
    INIT echo quick-out

SERVICE slow
    REQUIRES quick
    INIT <<~EOF
        echo slow-first
        sleep 1.2
        echo slow-last
    EOF
"""

STAMP = r"\d\d:\d\d:\d\d"


class SlowBase(FakeTarget):
    """The fake with a base that takes a while and prints nothing (a debootstrap)."""

    def resolve_base(self, base_ref):
        time.sleep(0.9)
        return super().resolve_base(base_ref)


def plain_build(tmp_path, target) -> list[str]:
    (tmp_path / "Amifile").write_text(AMIFILE)
    out = io.StringIO()
    reporter = Reporter(out, mode="plain", heartbeat=0.3, stage_after=0.4)
    try:
        build(target, BuildOptions(amifile=str(tmp_path / "Amifile")), reporter)
    finally:
        reporter.close()
    return out.getvalue().splitlines()


def index(lines: list[str], pattern: str) -> int:
    found = [i for i, line in enumerate(lines) if re.search(pattern, line)]
    assert found, (pattern, lines)
    return found[0]


def test_stage_line_before_the_step_output_and_heartbeats_while_silent(tmp_path):
    lines = plain_build(tmp_path, FakeTarget())
    stage = index(lines, rf"^{STAMP} \[2/2\] slow init$")
    first = index(lines, r"\| slow-first$")
    last = index(lines, r"\| slow-last$")
    done = index(lines, r"^\[2/2\] slow +RUN ")
    assert stage < first < last < done, lines
    beats = [i for i, line in enumerate(lines)
             if re.fullmatch(rf"{STAMP} \.\.\. still running \[2/2\] slow init \(\d+s\)", line)]
    assert beats and all(first < i < last for i in beats), lines
    # a step that ends quickly and silently (the fake's launch, upload, snapshot) prints none
    assert not [line for line in lines if re.search("launching|uploading|snapshot", line)], lines
    assert not [line for line in lines if "still running" in line and "slow init" not in line]


def test_slow_silent_step_outside_a_layer_gets_its_stage_line(tmp_path):
    lines = plain_build(tmp_path, SlowBase())
    base = index(lines, rf"^{STAMP} base debian:12$")
    assert base < index(lines, r"^\[1/2\] quick +RUN "), lines
    assert any(re.fullmatch(rf"{STAMP} \.\.\. still running base debian:12 \(\d+s\)", line)
               for line in lines[base:]), lines


def test_tty_output_has_no_stage_lines(tmp_path):
    (tmp_path / "Amifile").write_text(AMIFILE)
    out = io.StringIO()
    reporter = Reporter(out, mode="tty", heartbeat=0.3, stage_after=0.1)
    try:
        build(FakeTarget(), BuildOptions(amifile=str(tmp_path / "Amifile")), reporter)
    finally:
        reporter.close()
    text = out.getvalue()
    assert "still running" not in text
    assert not re.search(rf"(^|\n){STAMP} ", text), text


def test_heartbeat_interval_from_the_environment(monkeypatch):
    monkeypatch.setenv("AMIC_HEARTBEAT_SECONDS", "2.5")
    assert heartbeat_seconds() == 2.5 and Reporter(io.StringIO()).heartbeat == 2.5
    for bad in ("0", "-1", "soon", "inf", "nan"):
        monkeypatch.setenv("AMIC_HEARTBEAT_SECONDS", bad)
        assert heartbeat_seconds() == 30.0, bad
    monkeypatch.delenv("AMIC_HEARTBEAT_SECONDS")
    assert heartbeat_seconds() == 30.0
