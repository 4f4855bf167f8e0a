"""amic lint: one bad and one good snippet per rule, pragmas, thresholds, formats, shellcheck."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amic import lint

from amic.amifile import ir
from amic.errors import Pos, UsageError
from amic.lint.shell import ScriptMap, commands
from amic.lint.shellcheck import check_scripts, find_shellcheck

DATA = Path(__file__).parents[1] / "data" / "lint"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch) -> None:
    """shellcheck results are cached under $XDG_CACHE_HOME: not the user's, in tests."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))


def findings(tmp_path: Path, text: str, *, shellcheck: bool = False, ignore=()) -> list:
    """Lint ``text`` written as ``tmp_path/Amifile`` (so COPY sources resolve there)."""
    (tmp_path / "app").mkdir(exist_ok=True)
    (tmp_path / "app" / "main.py").write_text("print('hi')\n")
    (tmp_path / "nginx.conf").write_text("events {}\n")
    path = tmp_path / "Amifile"
    path.write_text(text)
    return lint.lint_paths([str(path)], shellcheck=shellcheck, ignore=ignore)


def codes(tmp_path: Path, text: str, **kw) -> set[str]:
    return {f.code for f in findings(tmp_path, text, **kw)}


# --------------------------------------------------------------------------- one test per rule

F = "FROM debian:12\n"

CASES = {
    "AM1000": (F + "BOGUS x\n", F + "SERVICE web\n    PACKAGES nginx\n"),
    "AM1001": (F + "INCLUDE ./nope.amifile\n",
               F + "INCLUDE httpd\nSERVICE web\n    REQUIRES httpd\n"),
    "AM1002": (F + "SERVICE web\n", F + "SERVICE web\n    PACKAGES nginx\n"),
    "AM2001": ("SERVICE web\n    PACKAGES nginx\n", F + "SERVICE web\n    PACKAGES nginx\n"),
    "AM2002": ("FROM debian:latest\nSERVICE web\n    PACKAGES nginx\n",
               "FROM ami-0abc1234\nSERVICE web\n    PACKAGES nginx\n"),
    "AM2003": (F + "ENV AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE\n",
               F + "ENV APP_HOME=/srv/app\nENV TOKEN_URL=https://sts.example.com\n"),
    "AM2004": (F + "ARG DB_PASSWORD=hunter2\nSERVICE db\n    INIT echo \"$DB_PASSWORD\"\n",
               F + "ARG DB_PASSWORD\nSERVICE db\n    INIT echo \"$DB_PASSWORD\"\n"),
    "AM3001": (F + "SERVICE web\n    UPDATE apt-get install -y nginx\n",
               F + "SERVICE web\n    PACKAGES nginx\n    UPDATE systemctl restart nginx\n"),
    "AM3002": (F + "SERVICE web\n    INIT dnf install nginx\n",
               F + "SERVICE web\n    INIT dnf -q -y install nginx\n"),
    "AM3003": (F + "SERVICE web\n    INIT apt-get install -y nginx\n",
               F + "SERVICE web\n"
               "    INIT DEBIAN_FRONTEND=noninteractive apt-get install -y nginx\n"),
    "AM3004": (F + "SERVICE web\n    INIT yum install -y nginx\n",
               F + "SERVICE web\n    PACKAGES nginx\n    INIT useradd --system web\n"),
    "AM3005": (F + "SERVICE web\n    INIT curl -fsSL https://get.example.com | sudo sh -s --\n",
               F + "SERVICE web\n    INIT <<~EOF\n"
               "        curl -fsSLo /tmp/get.sh https://get.example.com\n"
               "        sha256sum -c get.sha256\n        sh /tmp/get.sh\n    EOF\n"),
    "AM3006": (F + "SERVICE db\n    INIT mysql --user=root --password=hunter22 < schema.sql\n",
               F + "ARG DB_PASSWORD\nSERVICE db\n"
               "    INIT mysql --user=root --password=\"$DB_PASSWORD\" < schema.sql\n"),
    "AM3007": (F + "SERVICE web\n    INIT sudo systemctl enable nginx\n",
               F + "SERVICE web\n    INIT systemctl enable nginx\n"),
    "AM3008": (F + "SERVICE web\n    COPY missing.conf /etc/nginx/nginx.conf\n",
               F + "SERVICE web\n    COPY nginx.conf /etc/nginx/nginx.conf\n"),
    "AM3009": (F + "SERVICE web\n    INIT yum -y update\n",
               F + "SERVICE web\n    INIT yum -y update openssl\n"),
    "AM3010": (F + "SERVICE web\n    UPDATE systemctl reboot\n",
               F + "SERVICE web\n    UPDATE systemctl restart nginx\n"),
    "AM3011": (F + "SERVICE base\n    PACKAGES curl\nSERVICE web\n    REQUIRES base\n"
               "    PACKAGES nginx curl\n",
               F + "SERVICE base\n    PACKAGES curl\nSERVICE web\n    REQUIRES base\n"
               "    PACKAGES nginx\n"),
    "AM3012": (F + "SERVICE web\n    INIT <<EOF\n" + "true\n" * 4100 + "EOF\n",
               F + "SERVICE web\n    INIT <<EOF\n" + "true\n" * 100 + "EOF\n"),
    "AM3013": (F + "SERVICE web\n    COPY ../secret.conf /etc/web.conf\n",
               F + "SERVICE web\n    COPY nginx.conf /etc/nginx/nginx.conf\n"),
    "AM3014": (F + "SECRET TOKEN\nSERVICE web\n    INIT echo \"$TOKEN\" | wc -c\n"
               "    UPDATE curl -H \"X-Token: ${TOKEN}\" http://127.0.0.1/\n",
               F + "SECRET TOKEN\nSERVICE web\n    INIT echo \"$TOKEN\" | wc -c\n"
               "    UPDATE curl -H \"X-Token: $TOKEN_FILE\" http://127.0.0.1/\n"),
    "AM3015": (F + "SERVICE web\n    INIT echo \"$UNDEFINED_THING\"\n",
               F + "ARG THING=1\nSERVICE web\n    INIT echo \"$THING\"\n"),
    "AM4001": (F + "SERVICE web\n    REQUIRES htpd\n",
               F + "SERVICE httpd\n    PACKAGES apache2\nSERVICE web\n    REQUIRES httpd\n"),
    "AM4002": (F + "SERVICE a\n    REQUIRES b\nSERVICE b\n    REQUIRES a\n",
               F + "SERVICE a\n    REQUIRES b\nSERVICE b\n    PACKAGES curl\n"),
    "AM4003": (F + "ARG VERSION\nSERVICE web\n    INIT echo hello\n",
               F + "ARG VERSION\nSERVICE web\n    INIT echo \"${VERSION:-1}\"\n"),
    "AM4004": (F + "ENABLE web\nSERVICE web\n    PACKAGES nginx\nSERVICE debug\n    PACKAGES gdb\n",
               F + "SERVICE web\n    PACKAGES nginx\nSERVICE debug\n    PACKAGES gdb\n"),
    "AM4005": (F + "SERVICE app\n    COPY app/ /srv/app\nSERVICE db\n    PACKAGES postgresql\n",
               F + "SERVICE db\n    PACKAGES postgresql\nSERVICE app\n    COPY app/ /srv/app\n"),
}


def test_every_rule_has_a_case() -> None:
    assert set(CASES) == {r.id for r in lint.RULES}


@pytest.mark.parametrize("code", sorted(CASES))
def test_rule_bad_snippet_triggers(tmp_path: Path, code: str) -> None:
    bad, _ = CASES[code]
    assert code in codes(tmp_path, bad, shellcheck=code == "AM3012")


@pytest.mark.parametrize("code", sorted(CASES))
def test_rule_good_snippet_is_clean(tmp_path: Path, code: str) -> None:
    _, good = CASES[code]
    assert code not in codes(tmp_path, good, shellcheck=code == "AM3012")


def test_rule_table_is_consistent() -> None:
    ids = [r.id for r in lint.RULES]
    assert len(ids) == len(set(ids))
    for rule in lint.RULES:
        assert re.fullmatch(r"AM[1-4]\d{3}", rule.id)
        assert rule.severity in lint.SEVERITIES
        assert rule.doc_anchor == rule.id.lower()


def test_every_rule_is_documented() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "lint-rules.md").read_text()
    for rule in lint.RULES:
        assert re.search(rf"^## {rule.id}\b", doc, re.M), rule.id
        section = doc.split(f"## {rule.id}", 1)[1].split("\n## ", 1)[0]
        assert f"Severity: {rule.severity}" in section, rule.id


# --------------------------------------------------------------------------- rule details


def test_parse_error_is_a_finding_and_other_files_still_lint(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.write_text(F + "SERVICE web\n    COPY onlyone\n")
    good = tmp_path / "good"
    good.write_text("SERVICE web\n    PACKAGES nginx\n")
    found = lint.lint_paths([str(broken), str(good), str(tmp_path / "absent")], shellcheck=False)
    assert [(Path(f.pos.file).name, f.code, f.pos.line) for f in found] == [
        ("broken", "AM1000", 3), ("good", "AM2001", 1), ("absent", "AM1000", 1)]


def test_positions_point_at_the_offending_word(tmp_path: Path) -> None:
    text = F + ("SERVICE web\n"
                "    PACKAGES nginx curl nginx\n"
                "    COPY nginx.conf nope.conf /etc/\n"
                "    INIT <<~EOF\n"
                "        set -e\n"
                "        sudo apt-get install -y nginx\n"
                "    EOF\n")
    where = {(f.code, f.pos.line, f.pos.col) for f in findings(tmp_path, text)}
    assert ("AM3011", 3, 25) in where
    assert ("AM3008", 4, 21) in where
    assert ("AM3007", 7, 9) in where
    assert ("AM3003", 7, 14) in where


def test_install_detection_handles_wrappers_and_options() -> None:
    cmds = commands("DEBIAN_FRONTEND=noninteractive sudo -u root apt-get -o Dpkg::Use-Pty=0 "
                    "install -qy \\\n    nginx # comment\nx=$(wget -qO- http://x | sh)\n")
    apt, wget, sh = cmds
    assert (apt.name, apt.verb(frozenset({"-o"})), apt.assigns) == (
        "apt-get", "install", ("DEBIAN_FRONTEND=noninteractive",))
    assert [w.text for w in apt.wrappers] == ["sudo"]
    assert apt.words[-1].index == 1 and apt.words[-1].col == 5
    assert (wget.name, sh.name, sh.piped_from.name) == ("wget", "sh", "wget")


def test_heredoc_inside_a_script_is_not_commands(tmp_path: Path) -> None:
    text = F + ("SERVICE web\n    INIT <<~EOF\n        cat > /etc/motd <<'MOTD'\n"
                "        reboot to finish\n        MOTD\n    EOF\n")
    assert "AM3010" not in codes(tmp_path, text)


def test_reboot_in_init_and_shutdown(tmp_path: Path) -> None:
    assert "AM3010" in codes(tmp_path, F + "SERVICE web\n    INIT shutdown -r now\n")


def test_pipe_to_shell_through_command_substitution(tmp_path: Path) -> None:
    text = F + "SERVICE web\n    INIT bash -c \"$(curl -fsSL https://x.example/install)\"\n"
    assert "AM3005" in codes(tmp_path, text)


def test_private_key_and_secret_env(tmp_path: Path) -> None:
    text = F + ("ENV DB_PASSWORD=s3cr3tpw\nLABEL owner=web\nSERVICE web\n    INIT <<~EOF\n"
                "        cat > /root/.ssh/id_rsa <<'KEY'\n"
                "        -----BEGIN OPENSSH PRIVATE KEY-----\n"
                "        KEY\n    EOF\n")
    found = findings(tmp_path, text)
    assert {(f.code, f.pos.line) for f in found} >= {("AM2003", 2), ("AM3006", 7)}


def test_secret_references_are_fine(tmp_path: Path) -> None:
    text = F + ("ARG DB_PASSWORD\nENV DB_PASSWORD=$DB_PASSWORD\nSERVICE web\n"
                "    INIT echo \"password=$DB_PASSWORD\" > /etc/app.conf\n")
    assert not {"AM2003", "AM2004", "AM3006"} & codes(tmp_path, text)


def test_debian_frontend_from_env_counts(tmp_path: Path) -> None:
    text = F + ("ENV DEBIAN_FRONTEND=noninteractive\n"
                "SERVICE web\n    INIT apt-get install -y nginx\n")
    assert "AM3003" not in codes(tmp_path, text)


def test_cache_busting_not_reported_when_copy_is_last(tmp_path: Path) -> None:
    text = F + ("SERVICE app\n    REQUIRES db\n    COPY app/ /srv/app\n"
                "SERVICE db\n    PACKAGES postgresql\n")
    assert "AM4005" not in codes(tmp_path, text)


def test_cache_busting_when_heavy_service_requires_the_copy(tmp_path: Path) -> None:
    text = F + ("SERVICE app\n    COPY app/ /srv/app\n"
                "SERVICE deps\n    REQUIRES app\n"
                "    INIT pip install -r /srv/app/requirements.txt\n")
    found = [f for f in findings(tmp_path, text) if f.code == "AM4005"]
    assert len(found) == 1 and "move the COPY" in found[0].message


def test_unknown_service_through_include(tmp_path: Path) -> None:
    (tmp_path / "db.amifile").write_text("SERVICE db\n    PACKAGES postgresql\n")
    ok = F + "INCLUDE ./db.amifile\nSERVICE web\n    REQUIRES db\n"
    assert not {"AM4001", "AM1001"} & codes(tmp_path, ok)
    bad = F + "INCLUDE ./db.amifile\nSERVICE web\n    REQUIRES dbx\n"
    assert "AM4001" in codes(tmp_path, bad) and "AM1001" not in codes(tmp_path, bad)


def test_stock_fragment_needs_no_from(tmp_path: Path) -> None:
    (tmp_path / "web.amifile").write_text("SERVICE web\n    PACKAGES nginx\n")
    found = lint.lint_paths([str(tmp_path / "web.amifile")], shellcheck=False)
    assert "AM2001" not in {f.code for f in found}


def test_rules_run_on_ir_built_directly() -> None:
    pos = Pos("Amifile", 3)
    svc = ir.Service("web", pos, packages=("nginx",),
                     updates=(ir.Script("apk add nginx\n", Pos("Amifile", 5), body_line=5),))
    af = ir.Amifile("Amifile", base=ir.BaseImage("alpine:latest", Pos("Amifile", 1)),
                    services=(svc,))
    text = "FROM alpine:latest\n\nSERVICE web\n    PACKAGES nginx\n    UPDATE apk add nginx\n"
    found = lint.check(af, text, shellcheck=False)
    assert [(f.code, f.pos.line, f.pos.col) for f in found] == [
        ("AM2002", 1, 1), ("AM3001", 5, 12)]


# --------------------------------------------------------------------------- pragmas

PRAGMA = F + ("SERVICE web\n"
              "    # amic ignore=AM3007,SC2086\n"
              "    # (comments may sit between the pragma and its instruction)\n"
              "    INIT <<~EOF\n"
              "        sudo systemctl enable nginx\n"
              "        echo $1\n"
              "    EOF\n"
              "    UPDATE sudo systemctl restart nginx\n")


def test_pragma_applies_to_next_instruction_and_its_heredoc(tmp_path: Path) -> None:
    found = findings(tmp_path, PRAGMA, shellcheck=True)
    assert [(f.code, f.pos.line) for f in found if f.code in ("AM3007", "SC2086")] == [
        ("AM3007", 9)]


def test_global_pragma(tmp_path: Path) -> None:
    text = PRAGMA.replace("    UPDATE", "# amic global ignore=AM3007\n    UPDATE")
    assert "AM3007" not in codes(tmp_path, text)


def test_ignore_option(tmp_path: Path) -> None:
    assert "AM3007" not in codes(tmp_path, PRAGMA, ignore={"am3007"})


# --------------------------------------------------------------------------- shellcheck

def test_shellcheck_maps_heredoc_lines_and_columns(tmp_path: Path) -> None:
    text = F + ("SERVICE web\n"          # line 2
                "    INIT <<~EOF\n"      # line 3
                "        set -e\n"       # line 4
                "        echo $1\n"      # line 5: `$1` is at column 14
                "    EOF\n")
    found = [f for f in findings(tmp_path, text, shellcheck=True) if f.code == "SC2086"]
    assert [(f.pos.line, f.pos.col, f.severity) for f in found] == [(5, 14, "info")]


def test_shellcheck_inline_script_and_shebang(tmp_path: Path) -> None:
    text = F + ("SERVICE web\n"
                "    UPDATE echo $HOME/$1\n"
                "    INIT <<EOF\n#!/bin/bash\n[[ -n $1 ]] && echo ok\nEOF\n"
                "    INIT <<EOF\n#!/usr/bin/env python3\nprint('not shell $1')\nEOF\n")
    found = [(f.code, f.pos.line, f.pos.col) for f in findings(tmp_path, text, shellcheck=True)
             if f.code.startswith("SC")]
    assert ("SC2086", 3, 23) in found      # inline: mapped into the instruction line
    assert not [x for x in found if x[1] >= 5]   # bash [[ ]] is fine; python is skipped


def test_shellcheck_batches_many_scripts() -> None:
    scripts = {n: f"echo ${n % 9 + 1}\n" for n in range(150)}
    results = check_scripts(find_shellcheck(), scripts, cache=False)
    assert all([c.code for c in results[n]] == ["SC2086"] for n in scripts)


def test_script_map_inline_and_heredoc() -> None:
    lines = ["SERVICE x", "    INIT echo hi", "    UPDATE <<-EOF", "\t\techo $1", "EOF"]
    inline = ScriptMap(ir.Script("echo hi\n", Pos("A", 2, 5), body_line=2), lines)
    heredoc = ScriptMap(ir.Script("echo $1\n", Pos("A", 3, 5), body_line=4), lines)
    assert (inline.pos(0, 6).line, inline.pos(0, 6).col) == (2, 15)
    assert (heredoc.pos(0, 6).line, heredoc.pos(0, 6).col) == (4, 8)


# --------------------------------------------------------------------------- thresholds


@pytest.mark.parametrize(("threshold", "expected"), [
    ("error", 0), ("warning", 1), ("info", 1), ("style", 1), ("none", 0)])
def test_exit_code_follows_threshold(tmp_path: Path, threshold: str, expected: int) -> None:
    path = tmp_path / "Amifile"
    path.write_text("SERVICE web\n    INIT sudo true\n")          # warnings only
    out = io.StringIO()
    assert lint.run([str(path)], fmt="text", threshold=threshold, ignore=set(),
                    out=out) == expected


def test_info_only_passes_default_threshold(tmp_path: Path) -> None:
    path = tmp_path / "Amifile"
    path.write_text(F + "SERVICE web\n    INIT apk add nginx\n")   # AM3004 info
    out = io.StringIO()
    assert lint.run([str(path)], fmt="text", threshold=lint.DEFAULT_THRESHOLD,
                    ignore=set(), out=out) == 0
    assert "AM3004 info" in out.getvalue()


def test_run_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        lint.run([], fmt="xml", threshold="warning", ignore=set(), out=io.StringIO())
    with pytest.raises(UsageError):
        lint.run([], fmt="text", threshold="fatal", ignore=set(), out=io.StringIO())
    with pytest.raises(UsageError):
        lint.run([], fmt="text", threshold="error", ignore={"AM9999"}, out=io.StringIO())


# --------------------------------------------------------------------------- formats

BAD = DATA / "bad.Amifile"


def _run(fmt: str) -> tuple[int, str]:
    out = io.StringIO()
    code = lint.run([str(BAD)], fmt=fmt, threshold="warning", ignore=set(), out=out)
    return code, out.getvalue()


def test_text_format() -> None:
    code, text = _run("text")
    lines = text.splitlines()
    assert code == 1
    head = re.compile(r".+:(\d+):(\d+): (AM|SC)\d{4} (error|warning|info|style): .+")
    # each finding: its head, then (as compile shows an error) the source line and a caret
    # under the column, then an optional hint
    source = BAD.read_text().splitlines()
    k, heads = 0, 0
    while k < len(lines) - 1:
        m = head.fullmatch(lines[k])
        assert m, lines[k]
        line, col = int(m.group(1)), int(m.group(2))
        assert lines[k + 1] == "    " + source[line - 1].replace("\t", " ")
        assert lines[k + 2] == "    " + " " * (col - 1) + "^"
        k += 3 + lines[k + 3].startswith("hint: ")
        heads += 1
    assert heads == int(lines[-1].split()[0])
    assert re.fullmatch(r"\d+ problems in 1 file \(\d+ error, \d+ warning, \d+ info, \d+ style\)",
                        lines[-1])


def test_json_format() -> None:
    _, text = _run("json")
    rows = json.loads(text)
    assert rows and all(set(r) == {"code", "column", "file", "level", "line", "message"}
                        for r in rows)
    assert {"AM3001", "SC2086"} <= {r["code"] for r in rows}


def test_sarif_format() -> None:
    _, text = _run("sarif")
    doc = json.loads(text)
    assert doc["version"] == "2.1.0" and "sarif" in doc["$schema"]
    (run,) = doc["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] and driver["version"] and driver["informationUri"].startswith("http")
    rule_ids = [r["id"] for r in driver["rules"]]
    for rule in driver["rules"]:
        assert rule["shortDescription"]["text"] and rule["helpUri"].startswith("http")
        assert rule["defaultConfiguration"]["level"] in ("error", "warning", "note")
    assert run["results"]
    for result in run["results"]:
        assert result["ruleId"] in rule_ids
        assert rule_ids[result["ruleIndex"]] == result["ruleId"]
        assert result["level"] in ("error", "warning", "note") and result["message"]["text"]
        (loc,) = result["locations"]
        assert loc["physicalLocation"]["artifactLocation"]["uri"].endswith("bad.Amifile")
        region = loc["physicalLocation"]["region"]
        assert region["startLine"] >= 1 and region["startColumn"] >= 1


def test_github_format() -> None:
    _, text = _run("github")
    lines = text.splitlines()
    assert lines
    shape = re.compile(r"::(error|warning|notice) file=[^,]+,line=\d+,col=\d+,"
                       r"title=(AM|SC)\d{4}::[^\n]+")
    assert all(shape.fullmatch(line) for line in lines)
    assert any(re.fullmatch(r"::error file=.*bad\.Amifile,line=\d+,col=\d+,title=AM3001::"
                            r"apt-get installs packages in UPDATE.*", line) for line in lines)


def test_github_format_escapes() -> None:
    finding = lint.Finding("AM3001", "warning", "50% done\nnext", Pos("a,b:c", 1, 2))
    assert lint.render([finding], "github", files=1) == (
        "::warning file=a%2Cb%3Ac,line=1,col=2,title=AM3001::50%25 done%0Anext\n")


def test_clean_file_text_summary(tmp_path: Path) -> None:
    path = tmp_path / "Amifile"
    path.write_text(F + "SERVICE web\n    PACKAGES nginx\n")
    out = io.StringIO()
    assert lint.run([str(path)], fmt="text", threshold="style", ignore=set(), out=out) == 0
    assert out.getvalue() == "no problems found in 1 file\n"


def test_example_and_stock_services_are_clean_at_warning() -> None:
    root = Path(__file__).parents[2]
    paths = [str(p) for p in sorted((root / "services").glob("*/Amifile"))]
    example = root / "Amifile.example"
    if example.exists():
        paths.append(str(example))
    found = lint.lint_paths(paths)
    assert [f for f in found if f.severity in ("error", "warning")] == []


def test_env_and_arg_names_are_assigned_for_shellcheck(tmp_path: Path) -> None:
    text = F + ("ARG release\nENV app_home=/srv/app\nSERVICE web\n"
                "    ENV port=80\n    INIT echo \"$app_home\" \"$release\" \"$port\" \"$other\"\n")
    found = findings(tmp_path, text, shellcheck=True)
    # AM3015 says it (once), not shellcheck's SC2154 too
    assert [f.code for f in found if f.code in ("SC2154", "AM3015")] == ["AM3015"]
    assert [f.message.split()[0] for f in found if f.code == "AM3015"] == ["$other"]


def test_shellcheck_says_unassigned_where_am3015_cannot_know(tmp_path: Path) -> None:
    (tmp_path / "other.amifile").write_text("SERVICE other\n    INIT true\n")
    text = F + ("INCLUDE ./other.amifile\nARG release\nSERVICE web\n"
                "    INIT echo \"$release\" \"$other\"\n")
    found = [f.message for f in findings(tmp_path, text, shellcheck=True)
             if f.code in ("SC2154", "AM3015")]
    assert found == ["other is referenced but not assigned."]


def test_secret_names_need_a_secret_word(tmp_path: Path) -> None:
    text = F + "ENV PWD=/srv BYPASS=1 MAX_TOKENS=100 GITHUB_TOKEN=ghx-not-a-ref\n"
    found = [f for f in findings(tmp_path, text) if f.code == "AM2003"]
    assert [f.message.split(" holds")[0] for f in found] == ["ENV GITHUB_TOKEN"]


def test_inline_script_with_continuation_maps_to_physical_lines(tmp_path: Path) -> None:
    text = F + ("SERVICE web\n"
                "    INIT apt-get install \\\n"
                "        nginx && sudo true\n")
    where = {(f.code, f.pos.line, f.pos.col) for f in findings(tmp_path, text)}
    assert ("AM3002", 3, 10) in where and ("AM3007", 4, 18) in where


# --------------------------------------------------------------------------- robustness

_PIECES = st.sampled_from([
    "FROM debian:12", "FROM debian", "ARG A", "ARG TOKEN=abcd1234", "ENV B=$A", "ENABLE web",
    "INCLUDE httpd", "LABEL k=v", "SERVICE web", "SERVICE db", "REQUIRES db", "REQUIRES web",
    "PACKAGES nginx nginx", "COPY app/ /srv", "COPY nope /x", "INIT sudo apt-get install x",
    "INIT curl x | sh", "UPDATE reboot", "UPDATE yum install -y x \\\n  y",
    "INIT <<~EOF\n    echo $1 'a\n    cat <<X\n    X\nEOF", "# amic ignore=AM3007",
    "# amic global ignore=SC2086,AM4003", "INIT echo \"unterminated", "INIT ( | ;; `",
])


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_PIECES, max_size=12))
def test_lint_never_crashes(tmp_path: Path, pieces: list[str]) -> None:
    for f in findings(tmp_path, "\n".join(pieces) + "\n"):
        assert f.severity in lint.SEVERITIES and f.pos.line >= 1 and f.pos.col >= 1


def test_am3014_names_the_secret_and_where(tmp_path: Path) -> None:
    text = F + ("SERVICE web\n    SECRET KEY\n    UPDATE <<~EOF\n        true\n"
                "        echo ok; printf %s \"$KEY\"\n    EOF\n")
    found = [f for f in findings(tmp_path, text) if f.code == "AM3014"]
    assert len(found) == 1
    line = text.splitlines().index('        echo ok; printf %s "$KEY"') + 1
    assert (found[0].pos.line, found[0].pos.col) == (line, 29)
    assert "UPDATE of 'web' reads $KEY, a SECRET: secrets reach INIT only" in found[0].message
