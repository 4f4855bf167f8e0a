"""Project identity on EC2 (issue 17, item 1), through the real CLI against the stand-in.

Two teams each keep their Amifile in a folder called ``app``; before ``amic:project``
both were project ``app`` and ``ami prune`` in one removed the other's AMIs. Here every
image is made by a real ``amic build`` (moto in server mode, the instance stand-in), and
what prune keeps and removes is read back through the EC2 API.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness.e2e_builds import Builds
from tests.harness.ec2 import standin_ec2

pytestmark = [pytest.mark.slow, pytest.mark.root]

AMIFILE = """\
FROM debian:12
{name}
SERVICE base
    INIT echo shared-base > /etc/amic-base
SERVICE web
    REQUIRES base
    INIT echo {who} > /etc/amic-web
    UPDATE echo {who}-{version}
"""


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    with standin_ec2(tmp_path_factory) as fake:
        yield Builds(fake, tmp_path_factory.mktemp("home"))


def git_repo(folder: Path, remote: str | None) -> None:
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_SYSTEM": "/dev/null"}
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=folder, check=True, env=env)
    if remote:
        subprocess.run(["git", "remote", "add", "origin", remote], cwd=folder, check=True, env=env)


def write(folder: Path, who: str, version: str, name: str = "") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "Amifile").write_text(AMIFILE.format(who=who, version=version,
                                                   name=f"NAME {name}" if name else ""))


def finals_of(amis: dict, project: str) -> set[str]:
    return {i for i, t in amis.items()
            if t.get("amic:project") == project and t.get("amic:kind") == "final"}


def two_versions(builds: Builds, folder: Path, who: str, name: str = "") -> tuple[str, str]:
    write(folder, who, "v1", name)
    old = builds.build(folder)
    write(folder, who, "v2", name)
    return old, builds.build(folder)


def prune_each_side(builds: Builds, a: Path, b: Path, who: tuple[str, str], name=("", "")):
    a_old, a_new = two_versions(builds, a, who[0], name[0])
    b_old, b_new = two_versions(builds, b, who[1], name[1])
    amis = builds.amis()
    pa, pb = amis[a_new]["amic:project"], amis[b_new]["amic:project"]
    assert pa != pb and pa.startswith("p-")
    assert amis[a_new]["amic:name"] == amis[b_new]["amic:name"] or name[0]
    # listing per project: each side sees only its own finals
    ls_a = json.loads(builds.amic("ami", "ls", "--json", "--project", pa, cwd=a).stdout)
    assert {row["id"] for row in ls_a} == {a_old, a_new}
    # prune from A's folder: A's older final goes, everything of B stays
    out = builds.amic("ami", "prune", "--keep", "1", "--yes", cwd=a)
    left = builds.amis()
    assert a_new in left and a_old not in left, out.stderr
    assert {b_old, b_new} <= set(left)
    # the shared base layer (one key, made by A's first build) stays: B's finals sit on it
    base_keys = {t["amic:layer:base"] for i, t in left.items() if i in (b_old, b_new)}
    assert any(t.get("amic:key") in base_keys for t in left.values())
    # prune from B's folder: B's older final goes, A's newest stays
    builds.amic("ami", "prune", "--keep", "1", "--yes", cwd=b)
    left = builds.amis()
    assert {a_new, b_new} <= set(left) and b_old not in left
    assert finals_of(left, pa) == {a_new} and finals_of(left, pb) == {b_new}
    return pa, pb


def test_two_git_projects_in_folders_called_app_are_pruned_apart(builds, tmp_path):
    a, b = tmp_path / "teamA" / "app", tmp_path / "teamB" / "app"
    git_repo(a, "git@github.com:TeamA/app.git")
    git_repo(b, "https://github.com/TeamB/app.git")
    prune_each_side(builds, a, b, ("alpha", "beta"))


def test_two_named_projects_without_git_in_folders_called_app(builds, tmp_path):
    a, b = tmp_path / "one" / "app", tmp_path / "two" / "app"
    pa, pb = prune_each_side(builds, a, b, ("gamma", "delta"), name=("shop", "blog"))
    # a NAME outside git is the identity itself: --name finds it from anywhere
    ls = json.loads(builds.amic("ami", "ls", "--json", "--name", "shop", cwd=tmp_path).stdout)
    assert {row["project_id"] for row in ls} == {pa}


def test_one_repository_cloned_into_two_folders_is_one_project(builds, tmp_path):
    first, second = tmp_path / "clone" / "app", tmp_path / "elsewhere" / "my-copy"
    git_repo(first, "git@github.com:Team/one.git")
    git_repo(second, "ssh://git@github.com/Team/one")
    write(first, "epsilon", "v1")
    old = builds.build(first)
    write(second, "epsilon", "v2")
    new = builds.build(second)
    amis = builds.amis()
    assert amis[old]["amic:project"] == amis[new]["amic:project"]
    assert amis[old]["amic:name"] == "app" and amis[new]["amic:name"] == "my-copy"
    # pruned from the first clone: the newest final (built in the other clone) stays
    builds.amic("ami", "prune", "--keep", "1", "--yes", cwd=first)
    left = builds.amis()
    assert new in left and old not in left


def test_legacy_images_stay_unless_forced_and_no_identity_refuses(builds, tmp_path):
    a = tmp_path / "team" / "app"
    git_repo(a, "git@github.com:Team/legacy.git")
    write(a, "zeta", "v1")
    current = builds.build(a)
    ec2 = builds.fake.client()
    # what a build before amic:project left: a final named after the folder, no identity
    tags = {k: v for k, v in builds.amis()[current].items()
            if k not in ("amic:project", "amic:key", "Name")}
    instance = ec2.run_instances(ImageId=current, MinCount=1, MaxCount=1,
                                 InstanceType="t3.micro")["Instances"][0]["InstanceId"]
    legacy = ec2.create_image(InstanceId=instance, Name="app-legacy-final", TagSpecifications=[
        {"ResourceType": "image", "Tags": [{"Key": k, "Value": v} for k, v in
                                           {**tags, "amic:key": "0" * 64}.items()]}])["ImageId"]
    ec2.terminate_instances(InstanceIds=[instance])
    time.sleep(1.05)
    # created "before": moto dates images by the second; a prune keeps by CreationDate
    write(a, "zeta", "v2")
    newest = builds.build(a)
    out = builds.amic("ami", "prune", "--keep", "1", "--yes", cwd=a)
    left = builds.amis()
    assert legacy in left and newest in left and current not in left, out.stderr
    out = builds.amic("ami", "prune", "--keep", "1", "--yes", "--force", cwd=a)
    left = builds.amis()
    assert legacy not in left and newest in left, out.stderr
    # a folder outside git without NAME: no identity, prune refuses and says how to name it
    bare = tmp_path / "bare" / "app"
    write(bare, "eta", "v1")
    res = builds.amic("ami", "prune", "--yes", cwd=bare, check=False)
    assert res.returncode == 2, res.stderr
    assert "no identity" in res.stderr and "NAME" in res.stderr and "--name" in res.stderr
    assert "Traceback" not in res.stderr
    assert newest in builds.amis()
