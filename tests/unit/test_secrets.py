"""SECRET values from the command line to the INIT environment, and ``***`` everywhere else."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest

from amic.amifile import resolve
from amic.cli.common import build_args_from, secrets_from
from amic.compile import artifact
from amic.compile import plan as planmod
from amic.engine import buildinputs
from amic.contract import MASK_MIN, new_mark, own_prefix
from amic.engine.progress import OutputRouter, Redactor, Reporter, mask_secrets
from amic.errors import AmifileError, BuildError, Pos, UsageError

RUNNER = Path(__file__).parents[2] / "runtime" / "amic"

AMIFILE = """\
FROM debian:12
ARG REGION=eu
SECRET TOKEN
SERVICE db
    INIT echo db
SERVICE app
    REQUIRES db
    ARG APP_VERSION=1
    SECRET APP_KEY
    INIT echo "$TOKEN $APP_KEY"
"""


def make_plan(write_tree, text=AMIFILE, build_args=None):
    root = write_tree({"Amifile": text})
    return planmod.make_plan(resolve.load(root / "Amifile"), build_args or {}, environ={})


# ---------------------------------------------------------------- --secret


def test_secret_forms(tmp_path):
    (tmp_path / "f").write_bytes(b"from-file\n")
    (tmp_path / "crlf").write_bytes(b"two\nlines\r\n")
    env = {"VAR": "from-var", "NAMED": "from-named"}
    got = secrets_from([f"id=A,src={tmp_path / 'f'}", f"id=B,source={tmp_path / 'crlf'}",
                        "id=C,env=VAR", "NAMED", "id=NAMED2,type=env,env=NAMED"], env)
    assert got == {"A": "from-file", "B": "two\nlines", "C": "from-var", "NAMED": "from-named",
                   "NAMED2": "from-named"}


@pytest.mark.parametrize("spec, message", [
    ("id=A,env=UNSET", "--secret A: the environment variable UNSET is not set"),
    ("UNSET", "--secret UNSET: the environment variable UNSET is not set"),
    ("id=A,src=/nonexistent/x", "--secret A: cannot read /nonexistent/x: No such file or directory"),
    ("id=1A,env=X", "expected id=NAME,src=FILE"),
    ("id=A,src=f,env=X", "expected id=NAME,src=FILE"),
    ("id=A,mode=0400", "expected id=NAME,src=FILE"),
])
def test_secret_mistakes_are_usage_errors(spec, message):
    with pytest.raises(UsageError) as info:
        secrets_from([spec], {"X": "the-value"})
    assert message in str(info.value) and "the-value" not in str(info.value)


def test_secret_file_with_a_nul_is_refused(tmp_path):
    (tmp_path / "bin").write_bytes(b"a\0b")
    with pytest.raises(UsageError, match="NUL"):
        secrets_from([f"id=A,src={tmp_path / 'bin'}"], {})


def test_build_arg_value_for_a_credential_name_warns(capsys, monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "x")
    assert build_args_from(["REGION=eu", "DB_PASSWORD"]) == {"REGION": "eu", "DB_PASSWORD": "x"}
    assert capsys.readouterr().err == ""   # NAME alone reads the environment: no warning
    assert build_args_from(["API_TOKEN=abc"]) == {"API_TOKEN": "abc"}
    err = capsys.readouterr().err
    assert "--build-arg API_TOKEN=...: the value is on the command line" in err
    assert "declare SECRET API_TOKEN and pass --secret API_TOKEN" in err and "abc" not in err


# ---------------------------------------------------------------- build inputs


def test_init_env_holds_the_service_secrets_only(write_tree):
    p = make_plan(write_tree)
    secrets = {"TOKEN": "tok", "APP_KEY": "key"}
    assert buildinputs.init_env(p, "db", secrets) == {
        "REGION": "eu", "TOKEN": "tok", "AMIC_SECRET_NAMES": "TOKEN"}
    assert buildinputs.init_env(p, "app", secrets) == {
        "REGION": "eu", "APP_VERSION": "1", "TOKEN": "tok", "APP_KEY": "key",
        "AMIC_SECRET_NAMES": "TOKEN APP_KEY"}


def test_missing_secret_names_who_needs_it(write_tree):
    p = make_plan(write_tree)
    buildinputs.require_secrets(p, ["db"], {"TOKEN": "t"})   # db needs only the global one
    buildinputs.require_secrets(p, [], {})                   # nothing runs: nothing needed
    with pytest.raises(UsageError) as info:
        buildinputs.require_secrets(p, ["db", "app"], {"APP_KEY": "k"})
    assert str(info.value).startswith(
        "SECRET without a value: TOKEN (needed by db, app); give it with --secret id=TOKEN,")


def test_check_warns_about_undeclared_names_and_fails_on_missing_args(write_tree):
    warnings: list[str] = []
    p = make_plan(write_tree)
    buildinputs.check(p, ["REGION", "APP_VERSION", "NOPE"], ["TOKEN", "EXTRA"],
                      allow_missing_args=False, warn=warnings.append)
    assert warnings == ["build args not declared with ARG (ignored): NOPE",
                        "secrets not declared with SECRET (ignored): EXTRA"]
    p = make_plan(write_tree, AMIFILE.replace("ARG APP_VERSION=1", "ARG APP_VERSION"))
    with pytest.raises(UsageError, match="ARG without a value or default: APP_VERSION"):
        buildinputs.check(p, [], [], allow_missing_args=False, warn=warnings.append)
    buildinputs.check(p, [], [], allow_missing_args=True, warn=warnings.append)
    assert "built empty: --allow-missing-args" in warnings[-1]


def test_the_artifact_holds_no_secret_name(write_tree):
    p = make_plan(write_tree)
    manifest = artifact.manifest_text(p)
    assert "AMIC_ARGS='REGION APP_VERSION'" in manifest
    assert "TOKEN" not in manifest and "APP_KEY" not in manifest


# ---------------------------------------------------------------- redaction


def test_redactor_masks_every_value_and_every_line_of_one():
    r = Redactor(["abcd", "abcdefg", "line one\nline two\n", "  "])
    assert r("x abcdefg y abcd z") == "x *** y *** z"
    assert r("line one") == "***" and r("and line two.") == "and ***."
    assert r("   plain   ") == "   plain   "   # blank values mask nothing


def test_values_too_short_to_mask_are_left_alone_and_named():
    """A 1-character secret masked the letter everywhere (issue 18, item 10): values under
    MASK_MIN bytes are not masked, and the build warns naming the secret, not its value."""
    assert MASK_MIN == 4
    r = Redactor(["a", "ok", " ab ", "abc\nlong-enough"])
    assert r("a bad ok abc, long-enough") == "a bad ok abc, ***"
    stream = io.StringIO()
    reporter = Reporter(stream, mode="plain")
    mask_secrets(reporter, {"T": "a", "LONG": "s3cr3t", "MULTI": "s3cr3t\nok"})
    assert stream.getvalue() == (f"amic: warning: secret MULTI, T: a value (or line) under "
                                 f"{MASK_MIN} characters is not masked in the output (*** for "
                                 "every such bit of text would garble it); use a longer secret\n")
    assert reporter.redact("s3cr3t") == "***"


def test_router_masks_payload_only_and_takes_markers_with_its_nonce_only():
    """Markers carry the build's nonce; payload lines are masked, the runner's are not (a
    secret FAILED, init or a service name cannot hide a marker or move a line)."""
    stream = io.StringIO()
    reporter = Reporter(stream, mode="plain")
    mask_secrets(reporter, {"A": "FAILED", "B": "web: init", "C": "s3cr3t"})
    mark = new_mark()
    own = own_prefix(mark)
    router = OutputRouter(reporter.output, default="init", mark=mark)
    router(f"{own}web: init: begin")
    router("echo s3cr3t web: init FAILED")
    router("amic: web: init: ok 1s")                 # forged by a script: payload
    router("amic[0123456789abcdef0123456789abcdef]: db: init: begin")   # another nonce
    router(f"no newline at the end{own}web: init: FAILED exit 3 at Amifile:7")
    reporter.note("built image sha256:FAILEDs3cr3t")   # amic's own lines are never masked
    assert router.failures == {"web": ("3", "Amifile:7")}
    assert router.finished == {"web": "FAILED"} and router.current is None
    assert router.tail("web") == ["echo *** *** ***", "amic: ***: ok 1s",
                                  "amic[0123456789abcdef0123456789abcdef]: db: init: begin",
                                  "no newline at the end"]
    out = stream.getvalue()
    assert "s3cr3t" not in out.replace("sha256:FAILEDs3cr3t", "")
    assert "web | amic: web: init: FAILED exit 3 at Amifile:7" in out
    assert "amic: built image sha256:FAILEDs3cr3t" in out
    assert mark not in out
    err = reporter.redact.error(BuildError("failed:\n    s3cr3t"))
    assert str(err) == "failed:\n    ***"
    err = reporter.redact.error(AmifileError("bad s3cr3t", Pos("A", 1), source_line="s3cr3t",
                                             hint="s3cr3t"))
    assert "s3cr3t" not in err.render()
    several = AmifileError.collected([
        AmifileError("first", Pos("A", 1), source_line="x"),
        AmifileError("bad s3cr3t", Pos("A", 2), source_line="s3cr3t", hint="s3cr3t")])
    text = reporter.redact.error(several).render()
    assert "s3cr3t" not in text and "A:2:1: bad ***" in text   # the second error too


def runner_lines(first: str, last: str) -> str:
    """The runner's text from the line ``first`` to the line ``last`` (both kept)."""
    lines = RUNNER.read_text().splitlines(keepends=True)
    start = lines.index(first + "\n")
    return "".join(lines[start:lines.index(last + "\n", start) + 1])


def runner_redact(text: str, env: dict[str, str], shell: str = "sh") -> str:
    """The runner's own nonce parsing and ``redact``, over ``text``."""
    script = (runner_lines("MARK=${AMIC_MARK:-}", "SAY_PREFIX=amic${MARK:+[$MARK]}")
              + runner_lines("MASK_MIN=4", "}") + 'echo "$SAY_PREFIX" >&2; redact\n')
    proc = subprocess.run([*shell.split(), "-c", script], input=text, capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", **env}, check=True)
    return proc.stdout


@pytest.mark.parametrize("shell", ["dash", "busybox sh"])
def test_the_runner_masks_secret_values_in_its_output(shell):
    env = {"AMIC_SECRET_NAMES": "A B C D E", "A": "abcd", "B": "abc.*[x]",
           "C": "first\nsecond", "D": "ok", "E": "\u00e9\u00e9"}
    text = "abcd abc.*[x] abcdabcd\nfirst and second ok\nplain \u00e9\u00e9\n"
    assert runner_redact(text, env, shell) == "*** *** ******\n*** and *** ok\nplain ***\n"
    # both sides count bytes: a 2-character, 4-byte value is masked by the builder too
    assert Redactor(["\u00e9\u00e9"])("\u00e9\u00e9") == "***"


@pytest.mark.parametrize("shell", ["dash", "busybox sh"])
def test_the_runner_leaves_its_own_lines_alone(shell):
    """With the builder's nonce, the runner's own lines (and the part of a line from where one
    starts) are not masked; other lines are. A nonce that is no nonce is ignored."""
    mark = new_mark()
    env = {"AMIC_SECRET_NAMES": "A", "A": "init", "AMIC_MARK": mark}
    text = (f"amic[{mark}]: web: init: begin\nmy init\n"
            f"no newline, init amic[{mark}]: web: init: FAILED exit 1 at Amifile:3\n"
            "amic: web: init: ok 0s\n")
    assert runner_redact(text, env, shell) == (
        f"amic[{mark}]: web: init: begin\nmy ***\n"
        f"no newline, *** amic[{mark}]: web: init: FAILED exit 1 at Amifile:3\n"
        "amic: web: ***: ok 0s\n")
    for bad in ("", "0123", "g" * 32, "A" * 32, "a" * 65, f"{mark}]: x"):
        assert runner_redact("init\n", {**env, "AMIC_MARK": bad}, shell) == "***\n"


@pytest.mark.parametrize("shell", ["dash", "busybox sh"])
@pytest.mark.parametrize("log_dir", ["writable", "none"])
def test_the_runners_with_log_masks_and_keeps_the_status(tmp_path, shell, log_dir):
    """``with_log`` with secrets: output masked whether or not there is a log to append to,
    the command's exit status returned, the log (when there is one) masked too."""
    lines = RUNNER.read_text().splitlines(keepends=True)

    def function(name: str) -> str:
        start = lines.index(f"{name}() {{\n")
        return "".join(lines[start:lines.index("}\n", start) + 1])

    logdir = tmp_path / "log" if log_dir == "writable" else "/proc/amic-no-log-here"
    script = ("now() { echo T; }\nCMD=init\n" + function("with_log") + function("append_to")
              + function("redact") + f"LOGDIR={logdir}\n"
              + "fails() { echo \"token=$TOKEN\"; return 3; }\n"
              + "with_log fails; echo \"rc=$?\"\n")
    proc = subprocess.run([*shell.split(), "-c", script], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "AMIC_SECRET_NAMES": "TOKEN",
                               "TOKEN": "s3cr3t-value"})
    assert proc.stdout == "rc=3\n", proc
    assert proc.stderr == "token=***\n", proc
    if log_dir == "writable":
        log = (tmp_path / "log" / "amic.log").read_text()
        assert "token=***" in log and "s3cr3t" not in log, log
