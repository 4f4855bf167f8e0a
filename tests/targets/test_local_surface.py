"""The local target's everyday surface, through the real ``amic build`` (needs root).

- A build under umask 077 with a package download: apt keeps its sandbox (no
  "unsandboxed" warning: the root's "/" and the package cache directory have the
  modes apt expects, not the umask's), and the image's "/" is 0755.
- Plain output of the same build (``AMIC_HEARTBEAT_SECONDS`` short): the layer's
  timestamped stage line comes before its output, and a silent ``sleep`` gets a
  ``still running`` heartbeat.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.harness.cli import run_amic

pytestmark = [pytest.mark.slow, pytest.mark.root]

SANDBOX = """\
FROM debian:12

SERVICE web
    PACKAGES hello
    INIT <<~EOF
        echo web-starts
        sleep 2
        stat -c %a / > /etc/root-mode
        hello > /etc/hello-out
    EOF
"""


def amic_build(project: Path, cache: Path, *args: str, umask: int = 0o022,
               **env: str) -> subprocess.CompletedProcess:
    return run_amic("build", "--target", "local", "--progress", "plain", *args, cwd=project,
                    timeout=900, env={**os.environ, "AMIC_CACHE_DIR": str(cache), **env},
                    preexec_fn=lambda: os.umask(umask))


def test_apt_keeps_its_sandbox_and_plain_output_shows_stages(local_subject, amic_cache):
    project = local_subject.workdir / "sandbox"
    project.mkdir(exist_ok=True)
    (project / "Amifile").write_text(SANDBOX)
    proc = amic_build(project, amic_cache, umask=0o077, AMIC_HEARTBEAT_SECONDS="0.5")
    assert proc.returncode == 0, proc.stderr
    assert "Get:1" in proc.stderr, proc.stderr        # the package was downloaded by this build
    assert "unsandboxed" not in proc.stderr, proc.stderr
    assert "W: " not in proc.stderr, proc.stderr
    image = proc.stdout.strip()
    assert local_subject.read(image, "/etc/root-mode") == "755\n"
    assert local_subject.read(image, "/etc/hello-out") == "Hello, world!\n"

    lines = proc.stderr.splitlines()
    stage = [i for i, line in enumerate(lines)
             if re.fullmatch(r"\d\d:\d\d:\d\d \[1/1\] web init", line)]
    first = [i for i, line in enumerate(lines) if line.endswith("| web-starts")]
    beat = re.compile(r"\d\d:\d\d:\d\d \.\.\. still running \[1/1\] web init \(\d+s\)")
    beats = [i for i, line in enumerate(lines) if beat.fullmatch(line)]
    done = [i for i, line in enumerate(lines) if re.match(r"\[1/1\] web +RUN ", line)]
    assert stage and first and beats and done, proc.stderr
    assert stage[0] < first[0] < done[0], proc.stderr
    assert any(first[0] < i < done[0] for i in beats), proc.stderr     # the silent sleep


NO_CACHE = """\
FROM debian:12

SERVICE one
    INIT echo one > /etc/no-cache-one

SERVICE two
    REQUIRES one
    INIT date +%s%N > /etc/no-cache-two
"""


def images_by_key(store: Path) -> dict[str, list[str]]:
    import json

    out: dict[str, list[str]] = {}
    for meta_file in (store / "images").glob("*/meta.json"):
        meta = json.loads(meta_file.read_text())
        if meta.get("key"):
            out.setdefault(meta["key"], []).append(meta["id"])
    return out


def test_no_cache_replaces_the_images_of_its_keys(local_subject, amic_cache):
    import json

    project = local_subject.workdir / "no-cache"
    project.mkdir(exist_ok=True)
    (project / "Amifile").write_text(NO_CACHE)
    store = amic_cache / "local"
    first = json.loads(amic_build(project, amic_cache, "--json").stdout)
    assert [x["status"] for x in first["layers"]] == ["RUN", "RUN"]
    keys = [x["key"] for x in first["layers"]] + [first["final_key"]]
    first_two = local_subject.read(first["image_id"], "/etc/no-cache-two")

    proc = amic_build(project, amic_cache, "--json", "--no-cache")
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    assert [(x["status"], x["reason"]) for x in again["layers"]] == [("RUN", "--no-cache")] * 2
    assert again["final_key"] == first["final_key"]
    assert [x["key"] for x in again["layers"]] == keys[:2]
    # the layers really ran again: the second one wrote a new timestamp
    assert local_subject.read(again["image_id"], "/etc/no-cache-two") != first_two
    # one image per key, the new one; the old ones are gone from the store
    by_key = images_by_key(store)
    assert {k: by_key.get(k) for k in keys} == {
        k: [(store / "keys" / k).read_text().strip()] for k in keys}
    assert (store / "keys" / again["final_key"]).read_text().strip() == again["image_id"]
    assert not (store / "images" / first["image_id"]).exists()
    assert "replaced 3 image(s) under the same keys; removed the old ones" in proc.stderr

    # an unchanged build afterwards is answered with the new image
    proc = amic_build(project, amic_cache, "--json")
    assert json.loads(proc.stdout)["image_id"] == again["image_id"] and "RUN" not in proc.stderr
