"""Secrets that equal the runner's words, and scripts that print its markers, on the local target
through the real CLI and the real runner (issue 18, item 10).

A SECRET whose value is ``FAILED`` hid the failing line (the marker was masked into no marker),
one whose value is a service name and phase moved output to another service, a 1-character
one masked that letter everywhere (the image id too), and a script could print a marker. Now
the runner's lines carry the build's nonce and are never masked; payload is masked, values
under ``MASK_MIN`` bytes are not (with a warning).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.harness.cli import run_amic

pytestmark = [pytest.mark.slow, pytest.mark.root]

AMIFILE = """\
FROM debian:12
SECRET TOKEN
SECRET WORD
SECRET ONE
SERVICE db
    INIT <<~EOF
        echo "db init ok: $WORD"
        echo "amic: web: init: FAILED exit 9 at Amifile:1"
        echo "amic: db: init: ok 0s"
        echo "db still speaking"
    EOF
SERVICE web
    REQUIRES db
    ARG WEB_EXIT=0
    INIT <<~EOF
        echo "web says $TOKEN and $ONE"
        test "$ONE" = a
        printf 'no newline before the marker'
        exit "${WEB_EXIT:-0}"
    EOF
"""
FAILING_LINE = 19    # exit "${WEB_EXIT:-0}"
SECRETS = {"TOKEN": "FAILED", "WORD": "web: init", "ONE": "a"}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("words")
    (d / "Amifile").write_text(AMIFILE)
    return d


def amic(store: Path, project: Path, *args: str, env: dict | None = None):
    full = {**os.environ, "AMIC_CACHE_DIR": str(store), "AMIC_TARGET": "local", **SECRETS,
            **(env or {})}
    flags = [f for name in SECRETS for f in ("--secret", name)]
    return run_amic("build", "--progress=plain", *flags, *args, cwd=project, env=full,
                    timeout=900)


def test_failing_line_is_reported_though_a_secret_is_FAILED(local_store, project):
    proc = amic(local_store, project, "--build-arg", "WEB_EXIT=3")
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert f"service web failed (exit 3) at Amifile:{FAILING_LINE}" in err, err
    assert "amic: build failed:" in err
    # the forged markers were db's output, nothing else: db ran to its end and is no failure
    assert "db | db still speaking" in err
    assert "db | amic: ***: *** exit 9 at Amifile:1" in err
    assert "service db failed" not in err
    # payload masked (FAILED, "web: init"), the 1-character secret not (and warned about)
    assert "web | web says *** and a" in err
    assert "db | db init ok: ***" in err
    assert "amic: warning: secret ONE: a value (or line) under 4 characters" in err
    # the last output line without a newline is web's, the marker after it still a marker
    assert "web | no newline before the marker" in err
    assert "[2/2] web" in err and "FAILED" in err


def test_a_one_letter_secret_leaves_the_image_id_and_amics_lines_alone(local_store, project):
    proc = amic(local_store, project)
    assert proc.returncode == 0, proc.stderr
    image_id = proc.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", image_id), proc.stdout
    assert f"amic: built image {image_id[:12]}" in proc.stderr
    assert "[1/2] db" in proc.stderr and "[2/2] web" in proc.stderr
    own = [line for line in proc.stderr.splitlines()
           if " | " not in line and not line.startswith("amic: warning:")]
    assert own and not any("*" in line for line in own), own
    assert "FAILED" not in proc.stderr
