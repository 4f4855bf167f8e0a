"""Project identity on the local target (issue 17, item 1), through the real CLI.

Real builds (the cached debootstrap base, systemd-nspawn) into a store of the module's
own; two projects whose folders are both called ``app`` list and prune apart, one
repository cloned into two folders is one project, images without ``amic:project``
stay unless ``--force``, and a project without an identity cannot be pruned by name.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.harness.cli import run_amic

pytestmark = [pytest.mark.slow, pytest.mark.root]

AMIFILE = """\
FROM debian:12
{name}
SERVICE base
    INIT echo shared > /etc/amic-base
SERVICE web
    REQUIRES base
    INIT echo {who} > /etc/amic-web
    UPDATE echo {who}-{version}
"""


@pytest.fixture(scope="module")
def amic(local_store):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AMIC_", "GIT_"))}
    env.update(AMIC_CACHE_DIR=str(local_store), AMIC_TARGET="local")

    def run(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
        proc = run_amic(*args, cwd=cwd, env=env, timeout=900)
        if check:
            assert proc.returncode == 0, f"amic {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"
        return proc

    return run


def git_repo(folder: Path, remote: str) -> None:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_SYSTEM": "/dev/null"}
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True, env=env)
    subprocess.run(["git", "remote", "add", "origin", remote], cwd=folder, check=True, env=env)


def build(amic, folder: Path, who: str, version: str, name: str = "") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Amifile").write_text(AMIFILE.format(who=who, version=version,
                                                   name=f"NAME {name}" if name else ""))
    return json.loads(amic("build", "--json", cwd=folder).stdout)["image_id"]


def images(amic, cwd: Path) -> dict[str, dict]:
    return {row["id"]: row for row in json.loads(amic("images", "--all", "--json", cwd=cwd).stdout)}


def test_projects_in_folders_called_app_prune_apart(amic, tmp_path):
    folders = {"git-a": tmp_path / "teamA" / "app", "git-b": tmp_path / "teamB" / "app",
               "named-a": tmp_path / "one" / "app", "named-b": tmp_path / "two" / "app"}
    git_repo(folders["git-a"], "git@github.com:TeamA/app.git")
    git_repo(folders["git-b"], "https://github.com/TeamB/app")
    names = {"named-a": "shop", "named-b": "blog"}
    built = {}
    for side, folder in folders.items():
        built[side] = [build(amic, folder, side, v, names.get(side, "")) for v in ("v1", "v2")]
    rows = images(amic, tmp_path)
    projects = {side: rows[ids[1]]["project"] for side, ids in built.items()}
    assert "no identity" not in amic("build", cwd=folders["named-a"]).stderr
    assert len(set(projects.values())) == 4 and all(p.startswith("p-") for p in projects.values())
    assert rows[built["git-a"][1]]["name"] == rows[built["git-b"][1]]["name"] == "app"
    # `images` in a project's folder, --file: only that project's
    mine = json.loads(amic("images", "--json", "--file", "Amifile", cwd=folders["git-a"]).stdout)
    assert {row["id"] for row in mine} == set(built["git-a"])
    for side, folder in folders.items():      # pruned from each side in turn
        amic("prune", "--file", "Amifile", "--keep", "1", cwd=folder)
        left = images(amic, tmp_path)
        assert built[side][0] not in left and built[side][1] in left, side
        for other in folders:
            if other != side:
                assert built[other][1] in left, (side, other)
    # the shared base layer stays: every newest final sits on it
    assert json.loads(amic("build", "--json", cwd=folders["git-b"]).stdout)["cached"]


def test_one_repository_in_two_folders_is_one_project(amic, tmp_path):
    first, second = tmp_path / "clone" / "app", tmp_path / "elsewhere" / "copy"
    git_repo(first, "git@github.com:Team/one.git")
    git_repo(second, "ssh://git@github.com:22/Team/one.git")
    old = build(amic, first, "one", "v1")
    new = build(amic, second, "one", "v2")
    rows = images(amic, tmp_path)
    assert rows[old]["project"] == rows[new]["project"]
    amic("prune", "--file", "Amifile", "--keep", "1", cwd=first)
    left = images(amic, tmp_path)
    assert new in left and old not in left


def test_images_without_identity_stay_unless_forced(amic, local_store, tmp_path):
    bare = tmp_path / "bare" / "app"
    old = build(amic, bare, "bare", "v1")
    (bare / "Amifile").write_text(AMIFILE.format(who="bare", version="v2", name=""))
    proc = amic("build", "--json", cwd=bare)
    new = json.loads(proc.stdout)["image_id"]
    assert "no identity" in proc.stderr and "set NAME in the Amifile" in proc.stderr
    rows = images(amic, tmp_path)
    assert rows[old]["project"] is None and rows[old]["name"] == "app"
    # a project with no identity cannot be pruned by itself: the message says how to name it
    res = amic("prune", "--file", "Amifile", cwd=bare, check=False)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "NAME" in res.stderr and "--name" in res.stderr
    # nor does a prune of every project touch it (as images built before amic:project)
    amic("prune", "--keep", "1", cwd=tmp_path)
    assert {old, new} <= set(images(amic, tmp_path))
    amic("prune", "--keep", "1", "--force", cwd=tmp_path)
    left = images(amic, tmp_path)
    assert new in left and old not in left
