"""The VM and EC2 layers are made once when two builds want them at once.

The build lock is shared (it keeps only ``amic prune`` out). Before the key's lease, two
``--bake local`` builds started together each made the EC2 layer: the store held two
images under one key, and a build that had used the first found the second next time
("base image changed", every layer run again; seen in a CI run). These run the real
functions in two processes on one store, with real file locks.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest
from amic.targets.base import Image
from amic.targets.local import disk, ec2disk
from amic.targets.local.target import LocalTarget

FORK = multiprocessing.get_context("fork")


def _make_slowly(store: Path, key: str, count: Path, out: Path) -> None:
    target = LocalTarget(store=store)

    def make() -> Image:
        with count.open("a") as f:
            f.write("made\n")
        time.sleep(1.0)    # long enough for the other process to look and find nothing
        return target.store.commit({"key": key, "parent": None, "tags": {}}, None)

    out.write_text(disk.made_once(target, key, make).id)


def test_two_processes_make_one_image_under_a_key(tmp_path):
    store, count = tmp_path / "store", tmp_path / "count"
    procs = [FORK.Process(target=_make_slowly,
                          args=(store, "k" * 64, count, tmp_path / f"out{n}"))
             for n in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert count.read_text() == "made\n"
    assert (tmp_path / "out0").read_text() == (tmp_path / "out1").read_text()
    assert len(list((store / "images").iterdir())) == 1


def _hold_the_lease_then_record(store: Path, key: str, held: Path) -> None:
    target = LocalTarget(store=store)
    with target.lease(key, build_id="other"):
        held.touch()
        time.sleep(1.0)
        target.store.commit({"key": key, "parent": None, "tags": {}}, None)


@pytest.mark.parametrize("layer", ["vm", "ec2"])
def test_a_layer_another_build_is_making_is_waited_for_not_made_again(tmp_path, layer):
    """While another build holds the layer's lease, the layer functions wait and return
    its image; they would otherwise launch a machine over ``parent`` (which does not
    exist here: the test fails with an error instead)."""
    store, held = tmp_path / "store", tmp_path / "held"
    parent = Image(id="0" * 64, key="p" * 64, tags={"amic:base": "debian:12"})
    key = disk.vm_layer_key(parent) if layer == "vm" else ec2disk.ec2_layer_key(parent)
    other = FORK.Process(target=_hold_the_lease_then_record, args=(store, key, held))
    other.start()
    try:
        deadline = time.monotonic() + 10
        while not held.exists():
            assert time.monotonic() < deadline and other.is_alive()
            time.sleep(0.02)
        target = LocalTarget(store=store)
        fn = disk.vm_layer if layer == "vm" else ec2disk.ec2_layer
        got = fn(target, parent)
    finally:
        other.join(30)
    assert got.key == key
    assert [got.id.startswith(p.name) for p in (store / "images").iterdir()] == [True]
