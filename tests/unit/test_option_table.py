"""The option tables against the options classes, --help and the docs: a default is written once."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import attrs
import pytest

from amic.cli.main import build_parser
from amic.targets import Option, defaults
from amic.targets.ec2 import flags as ec2_flags
from amic.targets.ec2.options import Ec2Options
from amic.targets.ec2.session import AwsOptions
from amic.targets.ssh import flags as ssh_flags
from amic.targets.ssh.options import SshOptions

REPO = Path(__file__).resolve().parents[2]
TABLES = [(ec2_flags.EC2_OPTIONS, Ec2Options), (ec2_flags.AWS_OPTIONS, AwsOptions),
          (ssh_flags.SSH_OPTIONS, SshOptions)]
ALL_ROWS = [row for rows, _ in TABLES for row in rows]


def _class_default(cls, name: str):
    field = attrs.fields_dict(cls)[name]
    return field.default.factory() if isinstance(field.default, attrs.Factory) else field.default


@pytest.mark.parametrize(("rows", "cls"), TABLES, ids=["ec2", "aws", "ssh"])
def test_every_row_default_is_the_options_class_default(rows, cls) -> None:
    for row in rows:
        expected = defaults([row]).get(row.attribute)
        actual = _class_default(cls, row.attribute)
        if row.default is None:   # no value: the class's "off" (None, False, empty)
            assert actual in (None, False, (), {}), (row.flags, actual)
        else:
            assert actual == expected, (row.flags, actual, expected)
        # The default is the row's alone: no help string spells one out again.
        assert "default" not in (row.help or "").lower(), row.flags


def test_help_shows_each_rows_default_from_the_row() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    text = "".join(sub.choices["build"].format_help().split())   # wrapped anywhere, even at "-"
    shown = [row for row in ALL_ROWS if row.default_text is not None and row.help_text]
    assert len(shown) > 15
    for row in shown:
        assert "".join(f"default: {row.default_text}".split()) in text, row.flags
    # A row without help or default gets none.
    assert Option(["--x"], "x", "g", action="store_true").help_text is None
    assert Option(["--x"], "x", "g", default=2.0).help_text == "default: 2"
    assert Option(["--x"], "x", "g", "h", default=1, unset="$X").help_text == "h (default: $X or 1)"


# A doc states a flag's default in one of these forms, and only these (docs/*.md are
# written so): "`--flag ...` ... (default VALUE)", "`--flag`, default VALUE",
# "`--flag VALUE` (default)". VALUE is one backticked span or one word.
_VALUE = r"(`[^`]+`|[^\s`(),;|]+)"
_FORMS = (
    re.compile(r"`(--[a-z0-9-]+)(?: [^`]*)?`(?: [a-z]+)?(?:,| \()\s*default:?\s+" + _VALUE),
    re.compile(r"`(--[a-z0-9-]+) ([^`\s]+)` \(default\)"),
)


def doc_defaults(text: str) -> list[tuple[str, str, int]]:
    """(flag, default, line) for every default ``text`` states in one of :data:`_FORMS`."""
    found = []
    flat = text.replace("\n", " ")   # a mention may wrap; same offsets, so line numbers hold
    for form in _FORMS:
        for m in form.finditer(flat):
            value = m.group(2).strip("`").rstrip(".")
            found.append((m.group(1), value, text.count("\n", 0, m.start()) + 1))
    return found


def _parser_defaults() -> dict[str, set[str]]:
    """Every flag of every command with the defaults it has: the table's for table rows,
    argparse's (when not None) for the commands' own flags."""
    out: dict[str, set[str]] = {}
    table = {flag: row for row in ALL_ROWS for flag in row.flags}

    def walk(parser: argparse.ArgumentParser) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for child in action.choices.values():
                    walk(child)
            for flag in action.option_strings:
                if flag in table:
                    value = table[flag].default
                elif action.default not in (None, False, [], argparse.SUPPRESS):
                    value = action.default
                else:
                    continue
                if value is not None:
                    out.setdefault(flag, set()).add(str(int(value) if isinstance(value, float)
                                                        and value.is_integer() else value))
    walk(build_parser())
    return out


def test_every_default_a_doc_states_is_the_tables() -> None:
    known = _parser_defaults()
    checked, wrong = [], []
    for doc in sorted((REPO / "docs").glob("*.md")):
        for flag, value, line in doc_defaults(doc.read_text()):
            if flag not in known:      # a default decided in code (--file, --checkpoint)
                continue
            checked.append(flag)
            if value not in known[flag]:
                wrong.append(f"{doc.name}:{line}: {flag} default {value!r}, "
                             f"the code's: {sorted(known[flag])}")
    assert not wrong, "\n".join(wrong)
    # The mentions this test exists for are found (else a changed phrasing hides them).
    assert {"--ami-name", "--expire-after", "--instance-type", "--keep"} <= set(checked)


def test_doc_default_parser_catches_a_wrong_default() -> None:
    text = ("tagged (now + `--expire-after`, default 5h) and\n`--instance-type` (default\n"
            "`t3.nano`), `--keep N` (default 1), `--checkpoint auto` (default)")
    assert doc_defaults(text) == [("--expire-after", "5h", 1), ("--instance-type", "t3.nano", 2),
                                  ("--keep", "1", 3), ("--checkpoint", "auto", 3)]
    known = _parser_defaults()
    assert "5h" not in known["--expire-after"] and "4h" in known["--expire-after"]
    assert "t3.nano" not in known["--instance-type"]


def test_build_help_names_each_targets_checkpoint_default() -> None:
    # --checkpoint is the build command's, its default each target's attribute.
    import importlib

    from amic.targets import REGISTRY

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    action = next(a for a in sub.choices["build"]._actions if "--checkpoint" in a.option_strings)
    said = dict(re.findall(r"(\w+): (\w+)", action.help.split("(default: the target's;")[1]))
    for scheme, entry in REGISTRY.items():
        module, _, cls = entry.partition(":")
        default = getattr(importlib.import_module(module), cls).default_checkpoint
        assert said.get(scheme) == default, (scheme, said, default)


def _subparser(*path: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for name in path:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[name]
    return parser


def _listed(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for a in parser._actions if a.help != argparse.SUPPRESS for flag in a.option_strings}


def test_launch_lists_only_the_rows_a_launch_uses() -> None:
    launch, build = _subparser("launch"), _subparser("build")
    rows = ec2_flags.AWS_OPTIONS + ec2_flags.EC2_OPTIONS
    table = {flag for row in rows for flag in row.flags}
    used = {flag for row in rows if row.taken_by("launch") for flag in row.flags}
    assert _listed(launch) & table == used
    assert _listed(build) & table == table
    assert {"--ami-name", "--arch", "--share-with"} <= table - used
    # Not listed, and refused (issue 21): a launch never ignores an AMI option it was given.
    with pytest.raises(SystemExit):
        launch.parse_args(["ami-1", "--ami-name", "x", "--arch", "arm64"])


def test_what_launch_does_not_list_its_code_does_not_read() -> None:
    # The launch path: amic launch's module, the machine, the instance's resources, and the
    # target's launch methods. None of them may read an option launch does not list.
    import inspect

    from amic.targets.ec2 import launch, machine, placement, resources, target

    cls = target.Ec2Target
    source = "".join(inspect.getsource(o) for o in (
        launch, machine, placement, resources, cls.launch, cls._new_machine, cls._layer_ami, cls._keep,
        cls.find_image, cls.image_by_id, cls.ssh_cidrs))
    read = set(re.findall(r"opts\.(\w+)", source))
    assert {"instance_types", "spot_price", "ssh_port", "key_type", "ttl"} <= read   # it sees reads
    unlisted = {row.attribute for row in ec2_flags.EC2_OPTIONS if not row.taken_by("launch")}
    assert not read & unlisted


def test_the_docs_option_tables_are_the_rows() -> None:
    import runpy
    import subprocess
    import sys

    tool = REPO / "tools" / "option-table"
    proc = subprocess.run([sys.executable, str(tool), "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    ns = runpy.run_path(str(tool), run_name="option_table")
    doc = (REPO / "docs" / "ec2.md").read_text()
    assert "| `--instance-type TYPE[,TYPE...]` | t3.micro | `amic build`, `amic launch` |" in doc
    assert "| `--arch ARCH[,ARCH]` | from the instance type | `amic build` |" in doc
    # Positive control: a row whose default changed gives another table than the doc's.
    rows = tuple(row._replace(default="t3.nano") if row.dest == "instance_type" else row
                 for row in ec2_flags.AWS_OPTIONS + ec2_flags.EC2_OPTIONS)
    assert ns["current"](doc) == ns["table"](ec2_flags.AWS_OPTIONS + ec2_flags.EC2_OPTIONS)
    assert ns["current"](doc) != ns["table"](rows)
