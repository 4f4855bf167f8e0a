"""Rendering findings: ``text``, ``json`` (hadolint's shape), ``sarif`` 2.1.0, ``github``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import PurePath

from amic import __version__ as _amic_version
from amic import diagnostics
from amic.diagnostics import Diagnostic, escape_controls
from amic.lint.model import DOCS_URL, SEVERITIES, Finding
from amic.lint.rules import RULES, RULES_BY_ID
from amic.lint.shellcheck import Shellcheck

FORMATS = ("text", "json", "sarif", "github")

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_SARIF_LEVEL = {"error": "error", "warning": "warning", "info": "note", "style": "note"}
_GITHUB_LEVEL = {"error": "error", "warning": "warning", "info": "notice", "style": "notice"}


def shellcheck_uri(code: str) -> str:
    return f"https://www.shellcheck.net/wiki/{code}"


def render(findings: Sequence[Finding], fmt: str, *, files: int,
           shellcheck: Shellcheck | None = None) -> str:
    """The whole output for ``findings`` (already filtered and sorted); SARIF names the
    ``shellcheck`` that ran (a text lint says it on stderr, see :func:`amic.lint.run`)."""
    if fmt == "sarif":
        return _sarif(findings, files, shellcheck)
    return {"text": _text, "json": _json, "github": _github}[fmt](findings, files)


def _text(findings: Sequence[Finding], files: int) -> str:
    # the renderer compile uses: same position, source line, caret and hint, escaped (a
    # message may quote the Amifile, whose control characters must not reach the terminal)
    lines = [diagnostics.render(Diagnostic(f.pos.file, f.pos.line, f.pos.col, f.message,
                               label=f"{f.code} {f.severity}", source_line=f.source_line,
                               hint=f.hint)) for f in findings]
    where = f"{files} file{'s' if files != 1 else ''}"
    if not findings:
        lines.append(f"no problems found in {where}")
    else:
        counts = ", ".join(f"{sum(f.severity == s for f in findings)} {s}" for s in SEVERITIES)
        n = len(findings)
        lines.append(f"{n} problem{'s' if n != 1 else ''} in {where} ({counts})")
    return "\n".join(lines) + "\n"


def _json(findings: Sequence[Finding], files: int) -> str:
    rows = [{"code": f.code, "column": f.pos.col, "file": f.pos.file, "level": f.severity,
             "line": f.pos.line, "message": f.full_message()} for f in findings]
    return json.dumps(rows, indent=2) + "\n"


def _sarif(findings: Sequence[Finding], files: int, shellcheck: Shellcheck | None) -> str:
    rules = [{"id": r.id, "name": r.id, "shortDescription": {"text": r.summary},
              "helpUri": r.help_uri,
              "defaultConfiguration": {"level": _SARIF_LEVEL[r.severity]}} for r in RULES]
    first_level: dict[str, str] = {}
    for f in findings:
        if f.code not in RULES_BY_ID:
            first_level.setdefault(f.code, f.severity)
    for code in sorted(first_level):
        level = first_level[code]
        rules.append({"id": code, "name": code,
                      "shortDescription": {"text": f"ShellCheck {code}"},
                      "helpUri": shellcheck_uri(code),
                      "defaultConfiguration": {"level": _SARIF_LEVEL[level]}})
    index = {rule["id"]: k for k, rule in enumerate(rules)}
    results = [{
        "ruleId": f.code,
        "ruleIndex": index[f.code],
        "level": _SARIF_LEVEL[f.severity],
        "message": {"text": f.full_message()},
        "locations": [{"physicalLocation": {
            "artifactLocation": {"uri": PurePath(f.pos.file).as_posix()},
            "region": {"startLine": f.pos.line, "startColumn": f.pos.col},
        }}],
    } for f in findings]
    driver = {"name": "amic-lint", "version": _amic_version, "informationUri": DOCS_URL,
              "rules": rules,
              "properties": {"shellcheck": None if shellcheck is None else {
                  "path": shellcheck.path, "version": shellcheck.version,
                  "source": shellcheck.source}}}
    tool: dict = {"driver": driver}
    if shellcheck is not None:
        tool["extensions"] = [{"name": "shellcheck", "version": shellcheck.version,
                               "informationUri": "https://www.shellcheck.net",
                               "properties": {"path": shellcheck.path}}]
    doc = {
        "version": "2.1.0",
        "$schema": SARIF_SCHEMA,
        "runs": [{"tool": tool, "results": results}],
    }
    return json.dumps(doc, indent=2) + "\n"


def _escape_data(text: str) -> str:
    text = text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")
    return escape_controls(text)


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _github(findings: Sequence[Finding], files: int) -> str:
    lines = [f"::{_GITHUB_LEVEL[f.severity]} file={_escape_property(f.pos.file)},"
             f"line={f.pos.line},col={f.pos.col},title={f.code}::{_escape_data(f.full_message())}"
             for f in findings]
    return "".join(line + "\n" for line in lines)
