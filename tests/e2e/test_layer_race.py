"""Two exports ``--for ec2`` of one image at once, through the CLI, on a store that has
neither the VM nor the EC2 layer yet: each layer is made once.

The build lock is shared; before the key's lease (``disk.made_once``) both processes made
both layers, and a ``--bake local`` build that had used the first found the second next
time ("base image changed": the flake of tests/e2e/test_ec2_bake_local.py in CI). Here a
store of its own starts empty (the debootstrap base shared), as on a fresh machine.
"""

from __future__ import annotations

import collections
import json
import os
import subprocess

import pytest

from tests.harness.cli import AMIC, run_amic
from tests.harness.targets import cache_sharing_bases, share_packages

pytestmark = [pytest.mark.slow, pytest.mark.root]

AMIFILE = "FROM debian:12\nNAME racer\nSERVICE hello\n    INIT echo hi > /etc/hi\n"


def test_two_exports_at_once_make_each_layer_once(tmp_path_factory, tmp_path):
    cache = share_packages(cache_sharing_bases(tmp_path_factory))
    env = {**os.environ, "AMIC_CACHE_DIR": str(cache), "AMIC_TARGET": "local"}
    (tmp_path / "Amifile").write_text(AMIFILE)
    run_amic("build", "-q", "Amifile", cwd=tmp_path, env=env, check=True, timeout=1200)
    procs = [subprocess.Popen([AMIC, "export", "--for", "ec2", "-f", "raw",
                               "--no-authorized-key", "-o", str(tmp_path / f"{n}.raw"),
                               "latest"], cwd=tmp_path, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for n in ("a", "b")]
    outs = [p.communicate(timeout=1200) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-3000:] for _, err in outs]
    assert "Traceback" not in "".join(err for _, err in outs)
    made: collections.Counter[tuple[str, str]] = collections.Counter()
    for meta in (cache / "local" / "images").glob("*/meta.json"):
        record = json.loads(meta.read_text())
        service = (record.get("tags") or {}).get("amic:service")
        if service in ("vm-kernel", "ec2-boot"):
            made[service, record["key"]] += 1
    assert sorted(service for service, _ in made) == ["ec2-boot", "vm-kernel"], made
    assert set(made.values()) == {1}, made
    # both disks are of the same image (their root file systems' UUIDs differ)
    assert (tmp_path / "a.raw").stat().st_size == (tmp_path / "b.raw").stat().st_size
