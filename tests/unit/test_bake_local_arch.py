"""``--bake local`` on a machine it cannot bake for is refused before anything is made.

The bake's layers install Debian's amd64 cloud kernel and GRUB's x86 loaders, so on an arm64
(or any other) host it would fail deep in apt; the refusal names the SSH path instead. The
host's architecture is what ``platform.machine()`` says; the test sets that answer, the
check under test is amic's own."""

from __future__ import annotations

import platform

import pytest

from amic.errors import UsageError
from amic.targets.ec2 import local_bake


def test_an_x86_64_host_bakes(monkeypatch):
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert local_bake.host_arch() == "x86_64"


@pytest.mark.parametrize("machine,words", [
    ("aarch64", "x86_64 images only"), ("arm64", "x86_64 images only"),
    ("riscv64", "EC2 has no image for this machine's architecture 'riscv64'"),
    ("s390x", "EC2 has no image")])
def test_other_hosts_are_refused_pointing_at_the_ssh_path(monkeypatch, machine, words):
    monkeypatch.setattr(platform, "machine", lambda: machine)
    with pytest.raises(UsageError) as refused:
        local_bake.host_arch()
    assert words in str(refused.value) and "--bake instance" in str(refused.value)
