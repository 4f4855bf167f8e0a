"""``amic run --vm`` reads ``amic status`` over SSH checking the host key amic gave the VM
(``vm.ssh_run(host_key=...)``): against a real sshd, the pinned key is let in, any other
is refused at once (not retried until the boot timeout), and the key a ``known_hosts`` of
``vmhostkey`` pins is the one read."""

from __future__ import annotations

import time

import paramiko
import pytest
from amic.targets.local import vm, vmhostkey

from tests.harness.sshd import new_key

pytestmark = pytest.mark.root


def pin(tmp_path, key: paramiko.PKey):
    (tmp_path / vmhostkey.KNOWN_HOSTS).write_text(
        f"{vmhostkey.alias('t')} {key.get_name()} {key.get_base64()}\n")
    return vmhostkey.pinned(tmp_path)


def test_the_pinned_host_key_is_let_in(sshd_root, ssh_client_key, tmp_path):
    host_key = pin(tmp_path, sshd_root.host_public)
    rc, out = vm.ssh_run(sshd_root.port, ssh_client_key[1], "echo in", host_key=host_key)
    assert (rc, out) == (0, "in\n")


def test_another_host_key_is_refused_at_once(sshd_root, ssh_client_key, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(paramiko.BadHostKeyException):
        vm.ssh_run(sshd_root.port, ssh_client_key[1], "echo in",
                   host_key=pin(tmp_path, new_key()), timeout=60)
    assert time.monotonic() - t0 < 20


def test_no_known_hosts_pins_nothing_and_a_link_is_refused(tmp_path):
    assert vmhostkey.pinned(tmp_path) is None
    (tmp_path / vmhostkey.KNOWN_HOSTS).symlink_to("/etc/hostname")
    with pytest.raises(Exception, match="not a regular file"):
        vmhostkey.pinned(tmp_path)
