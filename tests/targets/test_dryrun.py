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

from tests.harness.stores import listing, watched_dirs
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


# -- compile shows what build installs -------------------------------------------------------

COMPILED = """\
FROM debian:12
ARG GREETING=hello

SERVICE web
    COPY --mode=0600 conf/app.conf /etc/app/app.conf
    COPY tree/ /srv/tree
    INIT <<~EOF
        echo "web $GREETING" > /etc/compiled-web
        cat /etc/app/app.conf > /etc/compiled-conf
    EOF
    UPDATE echo update-compiled
"""


@pytest.fixture(scope="module", params=[s for s in SUBJECTS if s.id in ("local", "ec2")])
def image_subject(request, amic_cache):
    return request.getfixturevalue(f"{request.param}_subject")


def installed_stage2(subject, image_id: str) -> Path:
    """The runner's /var/lib/amic/stage2 in the image: the top-most layer that has it (the
    install replaces the directory whole, so one layer holds all of it)."""
    rel = "var/lib/amic/stage2"
    if subject.name == "ec2":
        layers = subject.fake.standin.images[image_id]
    else:
        layers = subject.make().lowers(image_id)
    found = next((layer / rel for layer in layers if (layer / rel).is_dir()), None)
    assert found is not None, layers
    return found


def tree_entries(top: Path) -> dict[str, tuple]:
    out = {}
    for root, dirnames, files in os.walk(top):
        for name in dirnames + files:
            p = Path(root, name)
            rel = "stage2/" + str(p.relative_to(top))
            st = p.lstat()
            if p.is_symlink():
                out[rel] = ("symlink", 0o777, os.readlink(p).encode())
            elif p.is_dir():
                out[rel] = ("dir", st.st_mode & 0o7777, b"")
            else:
                out[rel] = ("file", st.st_mode & 0o7777, p.read_bytes())
    return out


def tar_entries(data: bytes) -> dict[str, tuple]:
    import io
    import tarfile

    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar.getmembers():
            if m.name == "stage2":
                continue
            if m.issym():
                out[m.name] = ("symlink", 0o777, m.linkname.encode())
            elif m.isdir():
                out[m.name] = ("dir", m.mode, b"")
            else:
                out[m.name] = ("file", m.mode, tar.extractfile(m).read())
    return out


def test_compile_with_base_is_the_stage2_the_build_installed(image_subject, amic_cli, amic_cache,
                                                             tmp_path):
    work = image_subject.workdir / "compiled"
    (work / "tree" / "sub").mkdir(parents=True, exist_ok=True)
    (work / "conf").mkdir(exist_ok=True)
    (work / "conf" / "app.conf").write_text("listen=8080\n")
    (work / "tree" / "a.txt").write_text("a\n")
    (work / "tree" / "sub" / "run.sh").write_text("#!/bin/sh\necho run\n")
    os.chmod(work / "tree" / "sub" / "run.sh", 0o755)
    (work / "Amifile").write_text(COMPILED)
    result = build(image_subject.make(), BuildOptions(amifile=str(work / "Amifile")),
                   Reporter(quiet=True))
    assert not result.cached

    env = {"AMIC_CACHE_DIR": str(amic_cache)}
    out = tmp_path / "stage2.tar"
    proc = amic_cli("compile", "--base", result.base_image_id, "-o", str(out),
                    str(work / "Amifile"), env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"final key {result.final_key[:12]}" in proc.stderr
    proc = amic_cli("compile", "--base", result.base_image_id, "--json", str(work / "Amifile"),
                    env=env)
    doc = json.loads(proc.stdout)
    assert doc["final_key"] == result.final_key
    assert [x["key"] for x in doc["layers"]] == [r.key for r in result.layers]
    # member by member: path, type, mode, content (symlink target)
    compiled = tar_entries(out.read_bytes())
    installed = tree_entries(installed_stage2(image_subject, result.image_id))
    assert sorted(installed) == sorted(compiled)
    assert installed == compiled
    assert b"AMIC_FINAL_KEY='" + result.final_key.encode() in compiled["stage2/manifest"][2]

    # without --base the keys are not the build's (the base image id is part of every key)
    proc = amic_cli("compile", "--json", str(work / "Amifile"), env=env)
    assert json.loads(proc.stdout)["final_key"] != result.final_key
