"""Failures point at the failing command: the line markers the artifact adds to scripts.

Each script below runs as written and as the artifact ships it (with markers),
under dash, busybox sh and bash --posix with ``-e`` as the runner runs it: the
output and exit status must be the same, and the last line written to
descriptor 8 must be the Amifile line of the command that ended the script.
(These scripts only echo and test: nothing of a user's INIT runs on the host.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from amic.compile import artifact, linemap
from amic.compile.plan import make_plan
from amic.amifile import resolve
from amic.engine.explain import layer_failure
from amic.engine.progress import OutputRouter

from tests.harness import tools

SHELLS = {"dash": ["dash"], "busybox": ["busybox", "sh"], "bash-posix": ["bash", "--posix"]}

TEN = """\
echo one
echo two
cat <<EOF
heredoc $HOME
EOF
x=1
test "$x" = 2
echo eight
echo nine
echo ten
"""

STATUS = """\
set +e
grep -q nothere /dev/null
rc=$?
echo "rc=$rc"
! true
echo "neg=$?"
exit 3
"""

TRICKY = """\
f()
{
  echo "in f $1"
  return 0
}
x=$(echo a
echo b)
y="multi
line $(printf '%s' ")")"
echo "$y"
case $x in
  a) echo A ;;
  (b) echo B
     ;;
  *) echo other ;;
esac
echo "$x" |
  tr a z
true &&
  echo and
cat <<-'END' | sed s/x/y/
	xx $y
	__amic_at 1 "$?" && :
	END
cat <<A; cat <<B
first
A
second
B
z=$((1 + (2 * 3)))
echo "${z} ${x:-$(echo d)}" # a comment ( with a paren
for i in 1 2; do echo "$i"; done
while false
do :; done
{ echo brace; }
( echo sub )
echo `echo back`
if [ "$z" = 7 ]; then
  f one
  false
fi
echo never
"""

MORE = r"""while read -r word; do
  echo "got $word"
done <<"EOF"
alpha
__amic_at 3 "$?" && :
EOF
cat <<\EOF
$NOT_EXPANDED `neither`
EOF
v=$(case a in
  a) echo in-case ;;
esac)
echo "$v ${#v} a#b" # not '"' a quote
g() { echo "g $*"; }
g x y
if true
then
  echo then
fi
s='it''s'
echo "$s" \
  continued
n=$(( (1 + 2) * 3 ))
test "$n" -eq 10
echo unreachable
"""

# (script, index (0-based) of the line that ends it)
CASES = {"ten": (TEN, 6), "status": (STATUS, 6), "more": (MORE, 23), "tricky": (TRICKY, 37)}  # the `if` the failing `false` is in


def run(shell: list[str], script: Path, line_file: Path | None) -> subprocess.CompletedProcess:
    cmd = " ".join([*shell, "-e", str(script)])
    if line_file is not None:
        cmd += f" 8>{line_file}"
    return subprocess.run(cmd, shell=True, capture_output=True, text=True, cwd=script.parent,
                          timeout=30)


@pytest.mark.parametrize("shell_id", sorted(SHELLS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_markers_change_nothing_but_report_the_line(case: str, shell_id: str, tmp_path: Path) -> None:
    text, failing = CASES[case]
    shipped = linemap.instrument(text, 100)
    assert shipped != text and shipped.count("__amic_at ") > 3
    (tmp_path / "s").mkdir()
    (tmp_path / "i").mkdir()
    (tmp_path / "s" / "x.sh").write_text(text)
    (tmp_path / "i" / "x.sh").write_text(shipped)
    want = run(SHELLS[shell_id], tmp_path / "s" / "x.sh", None)
    got = run(SHELLS[shell_id], tmp_path / "i" / "x.sh", tmp_path / "line")
    assert want.returncode != 0
    assert (got.returncode, got.stdout, got.stderr.replace("/i/", "/s/")) == \
        (want.returncode, want.stdout, want.stderr)
    assert (tmp_path / "line").read_text().split()[-1] == str(100 + failing)


def test_heredoc_bodies_are_untouched() -> None:
    shipped = linemap.instrument(TRICKY, 1)
    assert "\txx $y\n\t__amic_at 1 \"$?\" && :\n\tEND\n" in shipped
    assert "first\nA\nsecond\nB\n" in shipped
    assert "y=\"multi\nline $(printf '%s' \")\")\"\n" in shipped


@pytest.mark.parametrize("text", [
    "echo 'unterminated\n",
    "cat <<EOF\nno end\n",
    "if true; then\n  echo x\n",
    "echo x\nfi\n",
    "#!/usr/bin/env python3\nprint('hi')\n",
])
def test_what_cannot_be_followed_ships_unchanged(text: str) -> None:
    assert linemap.instrument(text, 5) == text


def test_without_descriptor_8_the_markers_do_nothing(tmp_path: Path) -> None:
    script = tmp_path / "x.sh"
    script.write_text(linemap.instrument(TEN, 1))
    proc = subprocess.run([tools.require("dash"), "-e", str(script)], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout.startswith("one\ntwo\nheredoc") and proc.stderr == ""


def test_shipped_scripts_are_shellcheck_clean(tmp_path: Path) -> None:
    script = tmp_path / "x.sh"
    script.write_text(linemap.instrument(TEN, 1))
    proc = subprocess.run([tools.pinned_shellcheck(), "-s", "sh", str(script)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


AMIFILE = """\
SERVICE app
    INIT <<~EOF
        echo one
        echo two
        cat <<END
        inner heredoc
        END
        echo six
        test -e /nonexistent/amic-line-7
        echo eight
        echo nine
        echo ten
    EOF
"""


def test_artifact_ships_marked_scripts_and_the_error_names_the_line(tmp_path: Path) -> None:
    (tmp_path / "Amifile").write_text(AMIFILE)
    plan = make_plan(resolve.load(str(tmp_path / "Amifile")))
    script = plan.service("app").service.inits[0]
    assert script.body_line == 3
    shipped = artifact.script_file_text(script)
    assert '__amic_at 9 "$?" && :\ntest -e /nonexistent/amic-line-7\n' in shipped
    # the runner reports the line it read back; the engine shows it with its text
    router = OutputRouter(lambda *a: None, default="init")
    for line in ("amic: app: init: begin", "six",
                 "amic: app: init: INIT script 01 failed (exit 1); the service is not marked initialised",
                 "amic: app: init: FAILED exit 1 at Amifile:9"):
        router(line)
    message = str(layer_failure(plan, "app", 1, router))
    assert message.splitlines()[0] == f"service app failed (exit 1) at {tmp_path}/Amifile:9"
    assert message.splitlines()[1] == "    test -e /nonexistent/amic-line-7"
    assert "six" in message
