"""``amic build --dry-run`` says what the next build does, layer by layer, and changes nothing.

On each target (the fake, local, and ec2 against moto + the instance stand-in)
a sequence of Amifile edits: before each real build a dry run, whose layers
(service, key, CACHED/RUN, reason), final key, final image and launch image
must be exactly what the build then reports. Around each dry run: the local
store, the memo and the base cache are listed (names, sizes, mtimes) and must
be the same; on ec2 every API call through the counting proxy is a Describe*.
(Not ssh: in place, the runner on the host skips an init it already ran, which only
the host knows; the dry run says RUN there.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from amic.engine.build import BuildOptions, build
from amic.engine.dryrun import dry_run
from amic.engine.progress import Reporter

from tests.harness.targets import SUBJECTS, counting_launches

V1 = """\
FROM debian:12
ARG GREETING=hi

SERVICE a
    INIT echo a-v1 > /etc/dry-a

SERVICE b
    REQUIRES a
    INIT echo b-v1 > /etc/dry-b
    UPDATE echo update-v1

SERVICE c
    REQUIRES b
    INIT echo c-v1 > /etc/dry-c
"""

STEPS = [
    ("cold", V1),
    ("unchanged", V1),
    ("middle INIT changed", V1.replace("b-v1", "b-v2")),
    ("UPDATE only", V1.replace("b-v1", "b-v2").replace("update-v1", "update-v2")),
    ("back to v1 (cached checkpoints)", V1),
    ("last INIT changed", V1.replace("c-v1", "c-v3")),
]


@pytest.fixture(scope="module", params=[s for s in SUBJECTS if s.id != "ssh"])
def subject(request, amic_cache):
    return request.getfixturevalue(f"{request.param}_subject")


def listing(*dirs: Path) -> dict[str, tuple]:
    """Every entry under ``dirs`` (not following symlinks) with its type, size and mtime."""
    out: dict[str, tuple] = {}
    for top in dirs:
        if not os.path.lexists(top):
            continue
        for root, dirnames, files in os.walk(top):
            for name in dirnames + files:
                p = os.path.join(root, name)
                st = os.lstat(p)
                out[p] = (st.st_mode, 0 if name in dirnames else st.st_size, st.st_mtime_ns)
    return out


def watched_dirs(amic_cache: Path) -> list[Path]:
    # the module's AMIC_CACHE_DIR (local store, memo, ec2 key files) and the shared bases'
    # top level (walking a Debian root twice per step would be slow; its stamp is there)
    bases = Path("/var/cache/amic/bases")
    return [amic_cache] + ([p for p in bases.iterdir() if p.is_file()] if bases.is_dir() else [])


def test_dry_run_matches_the_next_build_and_changes_nothing(subject, amic_cache):
    options = dict(amifile=str(subject.workdir / "Amifile"), checkpoint="all")
    proxy = getattr(getattr(subject, "fake", None), "proxy", None)
    for step, text in STEPS:
        (subject.workdir / "Amifile").write_text(text)
        before = listing(*watched_dirs(amic_cache))
        if proxy is not None:
            proxy.reset()
        plan = dry_run(subject.make(), BuildOptions(**options))
        if proxy is not None:
            called = dict(proxy.calls)
            assert called and all(a.startswith("Describe") for a in called), (step, called)
        assert listing(*watched_dirs(amic_cache)) == before, step

        target = subject.make()
        with counting_launches(target) as launched:
            result = build(target, BuildOptions(**options), Reporter(quiet=True))
        assert [(p.service, p.key, p.status, p.reason) for p in plan.layers] == \
            [(r.service, r.key, r.status, r.reason) for r in result.layers], step
        assert plan.final_key == result.final_key and plan.base_image_id == result.base_image_id
        assert (plan.final_image_id is not None) == result.cached, step
        if result.cached:
            assert plan.final_image_id == result.image_id and launched == [], step
        else:
            assert launched == [plan.launch_from], step
        ran = [r.service for r in result.layers if r.status == "RUN"]
        assert plan.would_run == ran, step
        expected = {"cold": ["a", "b", "c"], "unchanged": [], "middle INIT changed": ["b", "c"],
                    "UPDATE only": [], "back to v1 (cached checkpoints)": [],
                    "last INIT changed": ["c"]}[step]
        if subject.caps.keeps_images:
            assert ran == expected, (step, ran)


@pytest.mark.slow
@pytest.mark.root
def test_cli_dry_run_text_and_json(local_subject, amic_cli, amic_cache):
    (local_subject.workdir / "Amifile").write_text(V1.replace("c-v1", "c-cli"))
    env = {"AMIC_CACHE_DIR": str(amic_cache)}
    amifile = str(local_subject.workdir / "Amifile")
    before = listing(*watched_dirs(amic_cache))
    proc = amic_cli("build", "--target", "local", "--dry-run", amifile, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("base debian:12: ")
    assert any(line.startswith("[3/3] c") and " RUN " in line
               for line in lines), proc.stdout
    assert "does not exist: a build would launch from" in lines[-1]
    proc = amic_cli("build", "--target", "local", "--dry-run", "--json", amifile, env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["dry_run"] is True and doc["final"]["exists"] is False
    assert [(x["service"], x["status"]) for x in doc["layers"]][-1] == ("c", "RUN")
    assert listing(*watched_dirs(amic_cache)) == before
