"""Every independent error of an Amifile in one run, the same from ``amic compile`` and
``amic lint`` (golden files: ``tests/data/multi-error``).

``NAME.Amifile`` is a broken Amifile; ``NAME.compile`` is what ``amic compile`` writes on
stderr for it, ``NAME.lint`` what ``amic lint --no-shellcheck`` writes on stdout (both run
as the real console script, on a copy named ``Amifile``). Beyond the goldens, the two must
agree: the same errors at the same positions, with the same source line, caret and hint
(lint adds its rule id and severity, and lists findings below error level too).
A regression is one more case; a changed message, a golden file rewritten and reviewed.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.harness.cli import run_amic

DATA = Path(__file__).parents[1] / "data" / "multi-error"
CASES = sorted(DATA.glob("*.Amifile"))
HEAD = re.compile(r"^Amifile:\d+:\d+: ")
LINT_LABEL = re.compile(r"^(Amifile:\d+:\d+: )(?:AM|SC)\d{4} (error|warning|info|style): ")
CAP_NOTE = "... and more errors (amic stops looking after 20; fix these first)"


def _blocks(lines: list[str]) -> list[list[str]]:
    """Diagnostics: a head line and the lines under it (source, caret, hint)."""
    blocks: list[list[str]] = []
    for line in lines:
        if HEAD.match(line) or not blocks:
            blocks.append([line])
        else:
            blocks[-1].append(line)
    return blocks


def _run(case: Path, tmp_path: Path) -> tuple[object, object]:
    shutil.copy(case, tmp_path / "Amifile")
    compiled = run_amic("compile", "Amifile", "-o", "out.tar", cwd=tmp_path, timeout=120)
    linted = run_amic("lint", "--no-shellcheck", "Amifile", cwd=tmp_path, timeout=120)
    return compiled, linted


def test_there_are_cases() -> None:
    assert len(CASES) >= 5
    for case in CASES:
        assert case.with_suffix(".compile").exists() and case.with_suffix(".lint").exists(), case


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_compile_and_lint_report_every_error_alike(case: Path, tmp_path: Path) -> None:
    compiled, linted = _run(case, tmp_path)
    for proc in (compiled, linted):
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr and "\x1b" not in proc.stdout + proc.stderr
    assert not (tmp_path / "out.tar").exists()
    assert compiled.stderr == case.with_suffix(".compile").read_text()
    assert linted.stdout == case.with_suffix(".lint").read_text()

    # The same errors, positions, source lines, carets and hints from both commands.
    from_compile = _blocks([ln for ln in compiled.stderr.splitlines() if ln != CAP_NOTE])
    from_lint = []
    for block in _blocks(linted.stdout.splitlines()[:-1]):       # without the summary
        m = LINT_LABEL.match(block[0])
        assert m, block
        if m[2] == "error" and "not checked (amic stops looking" not in block[0]:
            from_lint.append([m[1] + block[0][m.end():], *block[1:]])
    assert len(from_compile) >= 2
    assert from_lint == from_compile
    assert (CAP_NOTE in compiled.stderr) == ("not checked (amic stops looking" in linted.stdout)


def test_at_most_twenty_errors_are_shown() -> None:
    text = (DATA / "many.compile").read_text()
    assert len([ln for ln in text.splitlines() if HEAD.match(ln)]) == 20
    assert (DATA / "many.Amifile").read_text().count("REQUIRES\n") > 20
    assert text.endswith(CAP_NOTE + "\n")


@pytest.mark.parametrize("kind", ["syntax", "graph"])
def test_ten_thousand_errors_cost_about_what_one_does(kind: str, tmp_path: Path) -> None:
    """The search stops at the cap (syntax), or finds everything in one pass and dresses
    only the shown errors with a source line and a suggestion (graph): bounded output, no
    quadratic work (20,000 suggestions over 10,000 names would take minutes)."""
    n = 10_000
    body = "    REQUIRES\n" if kind == "syntax" else "    REQUIRES nosuch{i}\n"
    (tmp_path / "Amifile").write_text("FROM debian:12\n" + "".join(
        f"SERVICE s{i}\n" + body.format(i=i) + "    INIT true\n" for i in range(n)))
    for args, stream in ((("compile", "Amifile", "-o", "out.tar"), "stderr"),
                         (("lint", "--no-shellcheck", "Amifile"), "stdout")):
        proc = run_amic(*args, cwd=tmp_path, timeout=120)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        text = getattr(proc, stream)
        if args[0] == "compile":
            assert len([ln for ln in text.splitlines() if HEAD.match(ln)]) == 20
            assert text.splitlines()[-1] == (CAP_NOTE if kind == "syntax" else
                                             f"... and {n - 20} more errors (only the first "
                                             "20 are shown)")
            assert len(text) < 5000


def _errors(text: str) -> list[tuple[int, int, str]]:
    from amic.amifile import parser
    from amic.errors import AmifileError

    with pytest.raises(AmifileError) as raised:
        parser.parse_text(text, "Amifile")
    return [(e.pos.line, e.pos.col, e.message) for e in raised.value.all()]


def test_a_heredoc_that_never_ends_ends_the_search() -> None:
    # the rest of the file is the heredoc's body: its lines are no instructions to report
    found = _errors("SERVICE a\n    REQUIRES\n    INIT <<EOF\n    RUN x\n    FROM y z\n")
    assert [(line, msg.split(":")[0]) for line, _, msg in found] == [
        (2, "REQUIRES needs at least one service name"), (3, "unterminated heredoc")]


def test_a_file_that_is_no_amifile_gives_one_error_and_no_line() -> None:
    from amic.amifile import parser
    from amic.errors import AmifileError

    with pytest.raises(AmifileError) as raised:
        parser.parse_text("root:x:0:0:root\nSERVICE a\n    REQUIRES\nsecret=hunter2\n", "f")
    assert len(raised.value.all()) == 1 and "hunter2" not in raised.value.render()
    assert "root:x" not in raised.value.render()


def test_script_lines_after_a_broken_opener_are_not_instructions() -> None:
    # the body of a heredoc whose opener is broken is skipped up to the next line that
    # starts with an instruction in capitals (lower-case `env` is shell, not ENV)
    found = _errors("SERVICE a\n    INIT <<EOF | tee\n    env X=1 make\n    EOF\n"
                    "    COPY x\n")
    assert [(line, col) for line, col, _ in found] == [(2, 10), (5, 11)]
