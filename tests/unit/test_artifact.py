"""The stage2 tarball: reproducible bytes, layout, secrets, golden outputs."""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from amic.compile import artifact

from amic.compile import plan

from amic.amifile import resolve

from tests.harness.cli import AMIC

GOLDEN = Path(__file__).parents[1] / "data" / "golden"
UPDATE = bool(os.environ.get("AMIC_UPDATE_GOLDEN"))


def golden_plan(build_args=None):
    return plan.make_plan(resolve.load(GOLDEN / "Amifile"), build_args or {"TOKEN": "hunter2"},
                          environ={})


def normalise(text: str) -> str:
    """Hashes change with the runtime; golden files pin structure, not digests."""
    return re.sub(r"\b[0-9a-f]{64}\b", "<sha256>", text)


def check_golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    actual = normalise(actual)
    if UPDATE:
        path.write_text(actual)
    assert path.read_text() == actual, f"{name} differs; AMIC_UPDATE_GOLDEN=1 regenerates it"


def members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: m for m in tar.getmembers()}


def read(data: bytes, name: str) -> str:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return tar.extractfile(name).read().decode()


def test_print_golden():
    check_golden("print.txt", artifact.print_text(golden_plan()))


def test_manifest_and_meta_golden():
    data = artifact.artifact_bytes(golden_plan())
    text = "".join(f"--- {name}\n{read(data, name)}" for name in (
        "stage2/manifest", "stage2/services/web/meta", "stage2/services/web/env",
        "stage2/services/web/copies", "stage2/services/web/packages"))
    check_golden("manifest.txt", text)


def test_layout_modes_and_owners():
    data = artifact.artifact_bytes(golden_plan())
    m = members(data)
    assert m["stage2/amic"].mode == 0o755
    assert m["stage2/services/web/files/02"].isfile() and m["stage2/services/web/files/02"].mode == 0o600
    assert m["stage2/services/web/files/01"].isdir()
    # COPY keeps the context's permission bits (whatever this checkout has) unless --mode
    assert m["stage2/services/web/files/01/conf/app.conf"].mode == \
        (GOLDEN / "site/conf/app.conf").stat().st_mode & 0o777
    assert m["stage2/services/web/files/01/conf"].mode == (GOLDEN / "site/conf").stat().st_mode & 0o777
    assert "stage2/runtime/__init__.py" not in m and not any("__pycache__" in n for n in m)
    for info in m.values():
        assert (info.uid, info.gid, info.uname, info.gname, info.mtime) == (0, 0, "root", "root", 0)
    assert list(m) == sorted(m)


def test_arg_values_never_in_artifact():
    data = artifact.artifact_bytes(golden_plan({"TOKEN": "hunter2-very-secret"}))
    assert b"hunter2-very-secret" not in data
    assert "TOKEN" in read(data, "stage2/manifest")


def test_scripts_hold_the_dedented_bodies():
    data = artifact.artifact_bytes(golden_plan())

    def body(text: str) -> str:  # without the line markers (tests/unit/test_failing_line.py)
        return "".join(line for line in text.splitlines(True)
                       if "__amic_at" not in line and "SC2320" not in line)
    assert body(read(data, "stage2/services/web/init/01.sh")) == \
        'echo "installing on $PORT"\nchown -R app "$APP_HOME"\n'
    assert body(read(data, "stage2/services/web/update/01.sh")) == 'echo "web update"\n'


def _copy_tree(dst: Path, umask: int) -> None:
    # Recreate the inputs file by file under another umask, as a fresh
    # checkout on another machine would.
    old = os.umask(umask)
    try:
        for src in GOLDEN.rglob("*"):
            target = dst / src.relative_to(GOLDEN)
            if src.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif src.suffix != ".txt":
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "w") as fh:
                    fh.write(src.read_text())
    finally:
        os.umask(old)


def test_reproducible_across_dirs_mtime_and_time(tmp_path, amic_cli):
    a, b = tmp_path / "one" / "checkout", tmp_path / "elsewhere" / "deeper" / "co"
    _copy_tree(a, 0o022)
    _copy_tree(b, 0o022)
    for path in b.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    outs = []
    for where, tz in ((a, "UTC"), (b, "Asia/Tokyo")):
        proc = amic_cli("compile", "Amifile", "-o", "out.tar", "--build-arg", "TOKEN=x",
                        cwd=where, env={"TZ": tz, "SOURCE_DATE_EPOCH": ""}, check=True)
        assert "final key" in proc.stderr
        outs.append((where / "out.tar").read_bytes())
    assert outs[0] == outs[1]
    assert str(tmp_path).encode() not in outs[0]


def test_copy_modes_are_inputs_but_the_umask_is_not(tmp_path, amic_cli):
    """A checkout under umask 077 has 0600 files: COPY keeps them 0600 (Docker does too),
    so the artifact differs in exactly those modes; the generated files do not change."""
    a, b = tmp_path / "a", tmp_path / "b"
    _copy_tree(a, 0o022)
    _copy_tree(b, 0o077)
    outs = []
    for where in (a, b):
        amic_cli("compile", "-o", "out.tar", "--build-arg", "TOKEN=x", cwd=where, check=True)
        outs.append(members((where / "out.tar").read_bytes()))
    assert outs[0]["stage2/services/web/files/01/index.html"].mode == 0o644
    assert outs[1]["stage2/services/web/files/01/index.html"].mode == 0o600
    assert outs[1]["stage2/services/web/files/01/conf"].mode == 0o700
    differ = {n for n in outs[0] if outs[0][n].mode != outs[1][n].mode}
    assert differ == {"stage2/services/web/files/01/index.html",
                      "stage2/services/web/files/01/conf",
                      "stage2/services/web/files/01/conf/app.conf"}
    # --mode=0600 pins files/02 either way; the runner and scripts keep 0755/0644
    assert outs[0]["stage2/services/web/files/02"].mode == outs[1]["stage2/services/web/files/02"].mode


def test_compile_to_stdout_matches_file(tmp_path, amic_cli):
    _copy_tree(tmp_path, 0o022)
    amic_cli("compile", "-o", "x.tar", "--build-arg", "TOKEN=1", cwd=tmp_path, check=True)
    proc = subprocess.run([AMIC, "compile", "-o", "-", "--build-arg", "TOKEN=1"],
                          cwd=tmp_path, capture_output=True, check=True)
    assert proc.stdout == (tmp_path / "x.tar").read_bytes()


def test_compile_json_lists_services_layers_and_keys(tmp_path, amic_cli):
    import json

    _copy_tree(tmp_path, 0o022)
    proc = amic_cli("compile", "--json", "--build-arg", "TOKEN=1", cwd=tmp_path, check=True)
    doc = json.loads(proc.stdout)
    assert [s["name"] for s in doc["services"]] == ["base", "web", "test"]
    assert doc["services"][1]["requires"] == ["base"]
    assert [layer["service"] for layer in doc["layers"]] == ["base", "web"]
    assert all(len(layer["key"]) == 64 for layer in doc["layers"])
    assert len(doc["final_key"]) == 64


@pytest.mark.parametrize("args,code,needle", [
    (["compile", "missing.amifile"], 2, "missing.amifile: no such file"),
    (["compile", "--bogus"], 2, "unrecognized arguments"),
    (["compile", "--build-arg", "=x"], 2, "expected NAME=VALUE"),
])
def test_usage_errors_exit_2(tmp_path, amic_cli, args, code, needle):
    proc = amic_cli(*args, cwd=tmp_path)
    assert proc.returncode == code
    assert needle in proc.stderr
    assert "Traceback" not in proc.stderr


def test_amifile_error_exit_1_with_caret(tmp_path, amic_cli):
    (tmp_path / "Amifile").write_text("SERVICE web\n    REQUIRES nope\n")
    proc = amic_cli("compile", cwd=tmp_path)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0].startswith("Amifile:2:14: service 'web' requires unknown service 'nope'")
    assert lines[1] == "        REQUIRES nope"
    assert lines[2] == "    " + " " * 13 + "^"
    assert "Traceback" not in proc.stderr


def test_missing_copy_source_is_an_amifile_error(tmp_path, amic_cli):
    (tmp_path / "Amifile").write_text("SERVICE web\n    COPY nothere/ /srv\n")
    proc = amic_cli("compile", cwd=tmp_path)
    assert proc.returncode == 1
    # the position is the source's own column, not the COPY keyword's
    assert proc.stderr.startswith("Amifile:2:10: COPY source 'nothere/' does not exist")


BARE = """\
FROM debian:12
ENV APP=/srv
SERVICE lib
    PACKAGES curl
SERVICE esac
SERVICE glue
    REQUIRES lib esac
    PACKAGES curl
SERVICE app
    REQUIRES glue
    INIT echo app
"""


def test_bare_services_have_no_directory_but_a_line_in_the_index(tmp_path):
    """Issue 18: a service with nothing for the runner to do but record its init (no own
    packages, COPY, INIT or UPDATE) costs no entry of its own; another one has no empty
    file or directory. The index, sourced by each shell, gives the values a meta would."""
    (tmp_path / "Amifile").write_text(BARE)
    p = plan.make_plan(resolve.load(tmp_path / "Amifile"), {}, environ={})
    data = artifact.artifact_bytes(p)
    names = [n for n in members(data) if n.startswith("stage2/services/")]
    assert names == ["stage2/services/app", "stage2/services/app/env",
                     "stage2/services/app/init", "stage2/services/app/init/01.sh",
                     "stage2/services/app/meta", "stage2/services/lib",
                     "stage2/services/lib/env", "stage2/services/lib/meta",
                     "stage2/services/lib/packages"]
    assert "AMIC_FORMAT=2\n" in read(data, "stage2/manifest")
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "index").write_text(read(data, "stage2/index"))
    show = ('for s in esac glue app; do amic_index "$s" || { echo "$s: none"; continue; }; '
            'echo "$s|$SERVICE_HASH|$SERVICE_LAYER_KEY|$SERVICE_SOURCE|$SERVICE_REQUIRES"; done')
    want = [f"{s}|{p.service(s).own_hash}|{p.layer(s).key}|Amifile:{line}|{req}"
            for s, line, req in (("esac", 5, ""), ("glue", 6, "lib esac"))] + ["app: none"]
    for shell in (["dash"], ["busybox", "sh"], ["bash", "--posix"]):
        out = subprocess.run([*shell, "-c", f". ./index; {show}"], cwd=tmp_path / "x",
                             capture_output=True, text=True, check=True).stdout
        assert out.splitlines() == want, shell


def test_the_index_is_split_into_functions_a_shell_can_parse(monkeypatch, tmp_path):
    """dash parses a ``case`` by recursion: the index holds lookups of INDEX_CHUNK names."""
    monkeypatch.setattr(artifact, "INDEX_CHUNK", 2)
    (tmp_path / "Amifile").write_text("".join(f"SERVICE s{i}\n" for i in range(5)))
    p = plan.make_plan(resolve.load(tmp_path / "Amifile"), {}, environ={})
    text = artifact.index_bytes(p).decode()
    assert "amic_index() {\n    for ai_f in _amic_x0 _amic_x1 _amic_x2; do" in text
    (tmp_path / "index").write_text(text)
    out = subprocess.run(["dash", "-c", ". ./index; for s in s0 s3 s4 s5; do "
                          'amic_index $s && echo "$SERVICE_SOURCE" || echo no; done'],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["Amifile:1", "Amifile:4", "Amifile:5", "no"]
