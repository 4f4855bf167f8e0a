"""``export --for ec2`` without booting anything: the IMDSv2 stand-in refuses what EC2
refuses (checked with curl, a client nobody here wrote), the guest relay carries a
request, the EC2 layer's key follows its files and not the stock VM layer's, and
the boot unit's shell runs against the stand-in (in a throwaway directory)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from amic.targets.base import Image
from amic.targets.local import disk, ec2disk

from tests.harness import imds, tools

PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKeyFromTheKeyPair key-pair"


@pytest.fixture
def server():
    with imds.Imds(instance_id="i-0abc", hostname="ip-10-0-0-9.ec2.internal",
                   public_key=PUBLIC, tags={"amic:services": "web"}) as s:
        yield s


def curl(*args: str) -> tuple[int, str]:
    proc = subprocess.run([tools.require("curl"), "-sS", "-w", "\n%{http_code}", *args],
                          capture_output=True, text=True, timeout=30)
    body, _, code = proc.stdout.rpartition("\n")
    return int(code), body


def token(server: imds.Imds, *headers: str) -> tuple[int, str]:
    argv = ["-X", "PUT"]
    for h in headers:
        argv += ["-H", h]
    return curl(*argv, f"{server.url}/latest/api/token")


def test_imds_stand_in_wants_a_token_as_imdsv2_does(server: imds.Imds) -> None:
    meta = f"{server.url}/latest/meta-data/"
    assert curl(meta + "instance-id")[0] == 401                       # no token
    assert curl("-H", "X-aws-ec2-metadata-token: forged", meta + "instance-id")[0] == 401
    assert token(server)[0] == 400                                    # no TTL
    assert token(server, f"{imds.TTL_HEADER}: 0")[0] == 400
    assert token(server, f"{imds.TTL_HEADER}: 21601")[0] == 400
    assert token(server, f"{imds.TTL_HEADER}: 60", "X-Forwarded-For: 10.0.0.1")[0] == 403
    code, tok = token(server, f"{imds.TTL_HEADER}: 60")
    assert code == 200 and len(tok) > 40
    auth = f"{imds.TOKEN_HEADER}: {tok}"
    assert curl("-H", auth, meta + "instance-id") == (200, "i-0abc")
    assert curl("-H", auth, meta + "public-keys/") == (200, "0=amic-test")
    assert curl("-H", auth, meta + "public-keys/0/openssh-key") == (200, PUBLIC + "\n")
    assert curl("-H", auth, meta + "tags/instance/") == (200, "amic:services")
    assert curl("-H", auth, meta + "tags/instance/amic:services") == (200, "web")
    assert curl("-H", auth, meta + "nothing")[0] == 404
    assert curl("-H", auth, f"{server.url}/latest/user-data")[0] == 404
    server.tags = None                                   # instance metadata tags off
    assert curl("-H", auth, meta + "tags/instance/amic:services")[0] == 404


def test_imds_token_expires(server: imds.Imds) -> None:
    import time

    _, tok = token(server, f"{imds.TTL_HEADER}: 1")
    time.sleep(1.2)
    assert curl("-H", f"{imds.TOKEN_HEADER}: {tok}",
                f"{server.url}/latest/meta-data/instance-id")[0] == 401


def test_the_guest_relay_carries_one_connection(server: imds.Imds) -> None:
    _, tok = token(server, f"{imds.TTL_HEADER}: 60")
    request = (f"GET /latest/meta-data/instance-id HTTP/1.0\r\n{imds.TOKEN_HEADER}: {tok}"
               "\r\n\r\n").encode()
    proc = subprocess.run([sys.executable, imds.__file__, str(server.port)], input=request,
                          capture_output=True, timeout=30)
    assert proc.stdout.startswith(b"HTTP/1.0 200") and proc.stdout.endswith(b"\r\n\r\ni-0abc")
    assert f"-cmd:{sys.executable} {imds.__file__} {server.port}" in imds.guestfwd(server.port)
    assert "," not in imds.guestfwd(server.port)        # QEMU's option separator


def test_ec2_layer_key_follows_its_files_and_leaves_the_vm_layer_alone(monkeypatch) -> None:
    image = Image(id="i" * 64, key="k" * 64, tags={})
    vm_key = disk.vm_layer_key(image)
    vm_image = Image(id="v" * 64, key=vm_key, tags={})
    key = ec2disk.ec2_layer_key(vm_image)
    assert key != vm_key and key == ec2disk.ec2_layer_key(vm_image)
    assert ec2disk.ec2_layer_key(Image(id="w" * 64, key="x" * 64, tags={})) != key
    real = ec2disk.file_text
    monkeypatch.setattr(ec2disk, "file_text",
                        lambda name: real(name) + ("#" if name == ec2disk.UNIT_NAME else ""))
    assert ec2disk.ec2_layer_key(vm_image) != key      # a changed unit makes a new layer
    assert disk.vm_layer_key(image) == vm_key


class Store:
    """The two look-ups ``peek_cloud_base`` makes, over what a store holds by key."""

    def __init__(self) -> None:
        self.by_key: dict[str, Image] = {}

    def find_image(self, key: str) -> Image | None:
        return self.by_key.get(key)


def test_the_cloud_base_is_found_by_its_base_and_both_layers_keys() -> None:
    # --bake local's services sit on it: its id (in every key above it) is new whenever the
    # debootstrap base or the VM or EC2 layer's scripts are
    base = Image(id="b" * 64, key=None, tags={})
    store = Store()
    assert ec2disk.peek_cloud_base(store, base) is None            # not built yet
    vm_image = Image(id="v" * 64, key=disk.vm_layer_key(base), tags={})
    store.by_key[vm_image.key] = vm_image
    assert ec2disk.peek_cloud_base(store, base) is None            # the EC2 layer missing
    cloud = Image(id="c" * 64, key=ec2disk.ec2_layer_key(vm_image), tags={})
    store.by_key[cloud.key] = cloud
    assert ec2disk.peek_cloud_base(store, base) == cloud
    assert ec2disk.peek_cloud_base(store, Image(id="r" * 64, key=None, tags={})) is None


@pytest.mark.root
def test_imds_unit_script_sets_key_and_hostname(server: imds.Imds, tmp_path: Path) -> None:
    """The unit's shell, run by dash against the stand-in in a private mount namespace
    whose /root, /etc and /proc/sys/kernel are throwaway (nothing of the host written)."""
    tools.require("dash")
    tools.require("unshare")
    root, etc, sysk = tmp_path / "root", tmp_path / "etc", tmp_path / "kernel"
    for d in (root, etc, sysk):
        d.mkdir()
    (root / ".ssh").mkdir(mode=0o700)
    (root / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAAearlier earlier\n")
    (sysk / "hostname").write_text("")
    script = Path(ec2disk.__file__).parent / "scripts" / "ec2-imds.sh"
    inner = (f"mount --bind {shlex.quote(str(root))} /root && mount --bind {shlex.quote(str(etc))} /etc && "
             f"mount --bind {shlex.quote(str(sysk))} /proc/sys/kernel && "
             f"AMIC_IMDS_URL={server.url} dash {shlex.quote(str(script))}")
    for _ in range(2):          # every boot: the key is added once
        proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                               inner], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    assert (root / ".ssh" / "authorized_keys").read_text() == \
        f"ssh-ed25519 AAAAearlier earlier\n{PUBLIC}\n"
    assert (etc / "hostname").read_text() == "ip-10-0-0-9\n"
    assert (sysk / "hostname").read_text() == "ip-10-0-0-9"
    assert [m for m, _, s in server.requests if s == 401] == []


@pytest.mark.root
def test_imds_unit_script_fails_on_a_bad_hostname(server: imds.Imds, tmp_path: Path) -> None:
    server.hostname = "evil;name.$(x)"
    etc = tmp_path / "etc"
    etc.mkdir()
    script = Path(ec2disk.__file__).parent / "scripts" / "ec2-imds.sh"
    inner = (f"mount --bind {shlex.quote(str(tmp_path))} /root && mount --bind {shlex.quote(str(etc))} /etc && "
             f"AMIC_IMDS_URL={server.url} dash {shlex.quote(str(script))}")
    proc = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", inner],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "no usable hostname" in proc.stderr, proc.stderr
    assert not (etc / "hostname").exists()
