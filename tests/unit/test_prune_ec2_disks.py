"""The previous EC2 disk ``--bake local`` keeps per project lives in the local store and is
counted and removed by ``amic prune --all`` (all of them, or the named project's only);
a plain prune keeps it, as it is what makes the next upload small."""

from __future__ import annotations

import os

from amic.contract import TAG_NAME, TAG_PROJECT
from amic.targets.ec2 import disk_reuse, ebs_image
from amic.targets.local import prune, vmdisks
from amic.targets.local.store import ImageStore

from tests.harness.cli import run_amic


def kept_disk(store: ImageStore, lineage: str, size: int) -> int:
    d = disk_reuse.kept_dir(store, lineage)
    d.mkdir(parents=True)
    with open(d / "disk.raw", "wb") as fh:
        fh.write(os.urandom(size))
    (d / "disk.json").write_text("{}")
    return sum(os.lstat(p).st_blocks * 512 for p in d.iterdir()) + os.lstat(d).st_blocks * 512


def test_prune_all_removes_and_counts_the_previous_ec2_disks(tmp_path):
    store = ImageStore(tmp_path / "local")
    size = kept_disk(store, "p-one", 3 * 1024 * 1024)
    env = {**os.environ, "AMIC_CACHE_DIR": str(tmp_path)}
    kept = run_amic("prune", env=env)
    assert kept.returncode == 0, kept.stderr
    assert vmdisks.ec2_disk_dirs(store) == [disk_reuse.kept_dir(store, "p-one")]
    dry = run_amic("prune", "--all", "--dry-run", env=env)
    assert dry.returncode == 0 and len(vmdisks.ec2_disk_dirs(store)) == 1, dry.stderr
    gone = run_amic("prune", "--all", env=env)
    assert gone.returncode == 0, gone.stderr
    assert vmdisks.ec2_disk_dirs(store) == []
    assert "previous EC2 disk" in gone.stdout + gone.stderr
    assert f"({size} bytes)" in gone.stderr


def test_a_project_prune_removes_only_that_projects_disk(tmp_path):
    store = ImageStore(tmp_path / "local")
    store.ensure_dirs()
    kept_disk(store, "p-one", 4096)
    kept_disk(store, "p-two", 4096)
    removed = prune.prune(store, everything=True, project="p-one")
    assert vmdisks.ec2_disk_dirs(store) == [disk_reuse.kept_dir(store, "p-two")]
    assert any("previous EC2 disk" in r for r in removed.removed)


def test_the_parent_snapshot_and_the_kept_disk_follow_one_lineage():
    assert ebs_image.lineage({TAG_PROJECT: "p-1", TAG_NAME: "web"}) == (TAG_PROJECT, "p-1")
    assert ebs_image.lineage({TAG_NAME: "web"}) == (TAG_NAME, "web")
    assert ebs_image.lineage({TAG_PROJECT: "", TAG_NAME: ""}) is None
