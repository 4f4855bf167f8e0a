"""The target contract: the same scenarios against every target, through the engine's API.

``subject`` is each target of ``tests.harness.targets.SUBJECTS`` in turn (the
fake, ``local``, ``ssh`` on a real sshd, ``ec2`` on moto and the instance
stand-in), with one store/host per target for the module. Every scenario
builds what it needs first (cheap when cached), so each also runs alone.
Where a target provisions in place (``caps.keeps_images`` False) the
scenario asserts what it means there: every build connects, the runtime on
the host skips the inits it already ran, the image id is the host.
"""

from __future__ import annotations

import io
import os
import re
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest
from amic.engine.build import BuildOptions, build
from amic.engine.progress import Reporter
from amic.errors import BuildError

from tests.harness.targets import SUBJECTS, counting_launches

TOKEN = "tok-5f1b0c2e9d"    # the ARG value: INITs see it, no disk may hold it

AMIFILE = """\
FROM debian:12
ARG TOKEN

SERVICE a
    INIT echo a-v1 > /etc/contract-a

SERVICE b
    REQUIRES a
    INIT <<~EOF
        test "${TOKEN#tok-}" = 5f1b0c2e9d
        echo b-v1 > /etc/contract-b
    EOF
    UPDATE echo update-v1

SERVICE c
    REQUIRES b
    INIT echo c-v1 > /etc/contract-c
"""

UPDATE_SCRIPT = "/var/lib/amic/stage2/services/b/update/01.sh"


@pytest.fixture(scope="module", params=SUBJECTS)
def subject(request, amic_cache):
    return request.getfixturevalue(f"{request.param}_subject")


class Run:
    """One build: its result (or error), the images launched from, what it printed."""

    def __init__(self, subject, text: str, *, log: Watched | None = None, **options) -> None:
        (subject.workdir / "Amifile").write_text(text)
        self.log = log or Watched(None)
        target = subject.make()
        self.error: BaseException | None = None
        self.result = None
        with counting_launches(target) as self.launched:
            try:
                self.result = build(target, BuildOptions(
                    amifile=str(subject.workdir / "Amifile"), build_args={"TOKEN": TOKEN},
                    checkpoint="all", **options), Reporter(self.log, mode="plain"))
            except (BuildError, KeyboardInterrupt) as exc:
                self.error = exc

    @property
    def statuses(self) -> list[tuple[str, str]]:
        return [(r.service, r.status) for r in self.result.layers]

    def __repr__(self) -> str:
        return f"<build {self.error!r} launched={self.launched}>\n{self.log.getvalue()[-3000:]}"


class Watched(io.StringIO):
    """The build's output; ``seen`` is set once a line contains ``needle``."""

    def __init__(self, needle: str | None) -> None:
        super().__init__()
        self.needle = needle
        self.seen = threading.Event()

    def write(self, text: str) -> int:
        if self.needle and self.needle in text:
            self.seen.set()
        return super().write(text)


def ok(subject, text: str = AMIFILE, **options) -> Run:
    run = Run(subject, text, **options)
    assert run.error is None, run
    return run


def assert_clean(subject) -> None:
    subject.assert_clean()
    assert not list(Path(tempfile.gettempdir()).glob("amic-stage2-*")), "stage2 tarball leaked"


def init_line(text: str, service: str) -> int:
    """The Amifile line of ``service``'s first INIT."""
    lines = text.splitlines()
    start = lines.index(f"SERVICE {service}")
    return next(i for i in range(start, len(lines)) if lines[i].strip().startswith("INIT")) + 1


# -- the scenarios ------------------------------------------------------------------------

def test_cold_build_runs_every_layer_and_the_image_has_their_files(subject):
    run = ok(subject)     # the module's first build on this target's fresh store or host
    r = run.result
    assert run.statuses == [("a", "RUN"), ("b", "RUN"), ("c", "RUN")], run
    if subject.caps.keeps_images:   # nothing of this project was kept before
        assert [x.reason for x in r.layers] == ["first build"] * 3
    else:                           # in place: no history on this side to say so from
        assert [x.reason for x in r.layers] == ["no earlier build", "parent changed (a re-ran)",
                                                "parent changed (a re-ran)"]
    assert not r.cached and run.launched == [r.base_image_id], run
    if subject.caps.keeps_images:
        assert r.image_id != r.base_image_id
        assert all(x.checkpoint for x in r.layers)     # --checkpoint all
    else:
        assert r.image_id == r.base_image_id           # the host is the result
    for service in "abc":
        assert subject.read(r.image_id, f"/etc/contract-{service}") == f"{service}-v1\n"
    assert_clean(subject)


def test_unchanged_rebuild_is_a_no_op_with_the_same_id(subject):
    first = ok(subject)
    again = ok(subject)
    assert again.result.image_id == first.result.image_id
    if subject.caps.keeps_images:
        assert again.result.cached and again.launched == [], again
        assert again.statuses == [("a", "CACHED"), ("b", "CACHED"), ("c", "CACHED")]
    else:   # connecting is the build; the host skips every init
        assert again.launched == [again.result.base_image_id]
        assert [(r.status, r.reason) for r in again.result.layers] == \
            [("CACHED", "already initialised on the host")] * 3, again
        assert "init: begin" not in again.log.getvalue()
    assert_clean(subject)


def test_changed_middle_layer_reruns_it_and_later_layers(subject):
    before = ok(subject)
    target = subject.make()
    run = ok(subject, AMIFILE.replace("b-v1", "b-v2"))
    r = run.result
    if subject.caps.keeps_images:
        assert run.statuses == [("a", "CACHED"), ("b", "RUN"), ("c", "RUN")], run
        assert [x.reason for x in r.layers[1:]] == ["init changed", "parent changed (b re-ran)"]
        assert run.launched == [target.find_image(before.result.layers[0].key).id], run
        assert r.image_id != before.result.image_id
    else:   # in place: the runtime re-runs the changed init only
        assert run.statuses == [("a", "CACHED"), ("b", "RUN"), ("c", "CACHED")], run
    assert "a: init: begin" not in run.log.getvalue()
    assert subject.read(r.image_id, "/etc/contract-b") == "b-v2\n"
    assert subject.read(r.image_id, "/etc/contract-a") == "a-v1\n"
    assert subject.read(r.image_id, "/etc/contract-c") == "c-v1\n"
    assert_clean(subject)


def test_update_only_change_reuses_every_init_layer(subject):
    before = ok(subject)
    target = subject.make()
    run = ok(subject, AMIFILE.replace("update-v1", "update-v2"))
    r = run.result
    assert "init: begin" not in run.log.getvalue(), run
    assert {s for _, s in run.statuses} == {"CACHED"}, run
    if subject.caps.keeps_images:
        assert not r.cached and r.image_id != before.result.image_id
        assert run.launched == [target.find_image(before.result.layers[-1].key).id], run
    else:
        assert r.image_id == before.result.image_id
        assert "b: update: begin" in run.log.getvalue()     # the host ran the new UPDATE
    assert "update-v2" in subject.read(r.image_id, UPDATE_SCRIPT)
    assert_clean(subject)


FAILING = AMIFILE.replace("    INIT echo c-v1 > /etc/contract-c\n", """\
    INIT <<~EOF
        echo about-to-fail
        exit 3
    EOF
""")


def test_failing_init_names_service_and_line_and_cleans_up(subject):
    ok(subject)
    run = Run(subject, FAILING)
    assert isinstance(run.error, BuildError), run
    text = str(run.error)
    # the path as the build was given it (here absolute), then the line of the failing command
    line = init_line(FAILING, "c") + 2
    assert re.search(rf"^service c failed \(exit 3\) at \S*\bAmifile:{line}$", text, re.MULTILINE), text
    assert "\n    exit 3\n" in text          # the Amifile line itself
    assert "about-to-fail" in text        # the tail of the service's output
    assert_clean(subject)


SLOW = AMIFILE + """
SERVICE slow
    REQUIRES c
    INIT <<~EOF
        echo sleeping
        sleep 60
    EOF
"""


def test_ctrl_c_during_init_cleans_up(subject):
    ok(subject)
    log = Watched("slow: init: begin")
    done = threading.Event()

    def interrupt() -> None:   # Ctrl-C, once the INIT is sleeping
        if log.seen.wait(120) and not done.wait(0.5):
            os.kill(os.getpid(), signal.SIGINT)

    watcher = threading.Thread(target=interrupt, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    try:
        run = Run(subject, SLOW, log=log)
    finally:
        done.set()
        watcher.join(5)
    assert isinstance(run.error, KeyboardInterrupt), run
    assert time.monotonic() - t0 < 60, run
    assert subject.kill_stray_inits() == []   # the INIT was stopped, on every target
    assert_clean(subject)


def test_arg_value_never_on_a_disk(subject):
    run = ok(subject)
    assert subject.read(run.result.image_id, "/etc/contract-b") == "b-v1\n"   # the INIT saw it
    assert subject.disk_holding(b"b-v1"), "the search finds what the INITs wrote"
    assert subject.disk_holding(TOKEN.encode()) == []


# c's INIT redraws a progress line (the same services: an ssh host keeps its stage2's)
PROGRESS = AMIFILE.replace("    INIT echo c-v1 > /etc/contract-c", r"""    INIT <<~EOF
        printf 'fetch 10%%\rfetch 55%%\rfetch done\n'
        echo c-v1 > /etc/contract-c
    EOF""")


def test_a_redrawn_progress_line_shows_its_last_state_on_every_target(subject):
    # Each machine hands the line over as written; the engine's router alone makes it
    # what a terminal shows, so every target prints (and keeps) the same line.
    if subject.name == "fake":
        pytest.skip("the fake interprets echo only; the router's rule: tests/unit")
    run = ok(subject, PROGRESS)
    text = run.log.getvalue()
    assert PROGRESS != AMIFILE
    assert re.search(r"\bc \| fetch done$", text, re.MULTILINE), run
    assert "fetch 10%" not in text and "fetch 55%" not in text and "\r" not in text, run
