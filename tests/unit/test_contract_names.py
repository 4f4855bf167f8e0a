"""The names in ``amic.contract`` are the ones the POSIX runner uses.

The runner cannot import Python, so this test reads ``runtime/amic`` and
checks that the state directory, the runner path and every progress marker
the runner prints are what the builders expect.
"""

from __future__ import annotations

import re
from pathlib import Path

from amic import contract

RUNNER_TEXT = (Path(__file__).resolve().parents[2] / "runtime" / "amic").read_text()


def test_state_dir_and_runner_path():
    m = re.search(r"^STATE=\$\{AMIC_STATE_DIR:-(?P<dir>[^}]+)\}", RUNNER_TEXT, re.M)
    assert m and m["dir"] == contract.STATE_DIR
    assert re.search(r"^RUNNER=\$STATE/stage2/amic\b", RUNNER_TEXT, re.M)
    assert contract.RUNNER == f"{contract.STATE_DIR}/stage2/amic"


def test_build_key_mark():
    assert re.search(rf"^BUILD_KEY_MARK={re.escape(contract.BUILD_KEY_MARK)}$", RUNNER_TEXT, re.M)


def marker_lines() -> list[str]:
    """Every ``say "<svc>: <phase>: <event> ..."`` of the runner, with variables filled in."""
    lines = []
    for m in re.finditer(r'say "(\$\w+|\$\{?\d\}?): (init|update): (begin|ok|skipped|FAILED)([^"]*)"',
                         RUNNER_TEXT):
        rest = re.sub(r"\$\{?\w+\}?", "7", m[4])
        lines.append(f"amic: web: {m[2]}: {m[3]}{rest}")
    return lines


def test_every_progress_marker_the_runner_prints_is_understood():
    lines = marker_lines()
    assert {line.split(": ")[3].split()[0] for line in lines} >= {"begin", "ok", "FAILED"}
    for line in lines:
        m = contract.MARKER.match(line)
        assert m, line
        assert m["svc"] == "web"
        if m["event"] == "FAILED":
            assert contract.FAILED_AT.search(m["rest"])["code"] in ("1", "7"), line


def test_marker_rejects_other_output():
    assert contract.MARKER.match("amic: web: init: started") is None
    assert contract.MARKER.match("web: init: begin") is None


def test_nonce_variable_and_mask_minimum():
    assert re.search(rf"^MARK=\$\{{{contract.MARK_VAR}:-\}}$", RUNNER_TEXT, re.M)
    assert re.search(rf"^unset {contract.MARK_VAR}$", RUNNER_TEXT, re.M)
    assert re.search(r"^SAY_PREFIX=amic\$\{MARK:\+\[\$MARK\]\}$", RUNNER_TEXT, re.M)
    assert contract.own_prefix("ab" * 8) == f"amic[{'ab' * 8}]: "
    assert contract.own_prefix(None) == "amic: "
    assert re.search(rf"^MASK_MIN={contract.MASK_MIN}$", RUNNER_TEXT, re.M)
    # 16 to 64 hex digits: what the runner accepts
    assert re.fullmatch(r"[0-9a-f]{16,64}", contract.new_mark())
