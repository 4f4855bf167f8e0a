"""Boot-time requests from whoever started a VM (``amic run --vm --service X``).

The runner reads the systemd credential ``amic.services`` (what systemd makes of
the SMBIOS type 11 string ``io.systemd.credential:amic.services=X``), or, without
systemd's copy, the same string straight from the SMBIOS table. Real compiler
output in a chroot of the cached base, under each shell the runner supports.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from tests.harness.roots import RUNNER, SHELLS, Root, compile_stage2

AMIFILE = """
ENABLE base
SERVICE base
    INIT echo init base >> /root/order
    UPDATE echo update base >> /root/order
SERVICE extra
    REQUIRES base
    INIT echo init extra >> /root/order
SERVICE never
    INIT echo init never >> /root/order
"""


def smbios_type11(*strings: str) -> bytes:
    """An SMBIOS type 11 (OEM strings) structure as /sys/firmware/dmi/entries/11-0/raw holds it."""
    header = struct.pack("<BBHB", 11, 5, 0x0100, len(strings))
    return header + b"".join(s.encode() + b"\0" for s in strings) + b"\0"


@pytest.mark.root
@pytest.mark.parametrize("shell_id", ["dash", "busybox", "bash-posix"])
@pytest.mark.parametrize("channel", ["smbios", "credential"])
def test_vm_request_initialises_the_service_at_boot(tmp_path: Path, shell_id: str,
                                                    channel: str) -> None:
    root = Root(tmp_path)
    shell = SHELLS[shell_id]
    root.put("/usr/bin/busybox", Path(shutil.which("busybox")).read_bytes(), 0o755)
    root.install_stage2(compile_stage2(tmp_path / "ctx", AMIFILE), shell)
    env = {"AMIC_EC2": "0", "AMIC_SMBIOS_DIR": "/fake-dmi", "AMIC_CREDENTIALS_DIR": "/fake-cred"}
    rc, out = root.run(f"{shell} {RUNNER} boot", env=env, check=None)
    assert rc == 0, out
    assert root.read("/root/order").splitlines() == ["init base", "update base"]

    if channel == "smbios":
        root.put("/fake-dmi/11-0/raw", smbios_type11("vendor thing", "io.systemd.credential:amic.services=extra"))
    else:
        root.put("/fake-cred/amic.services", "extra\n")
    root.run("rm /root/order")
    rc, out = root.run(f"{shell} {RUNNER} boot", env=env, check=None)
    assert rc == 0, out
    assert root.read("/root/order").splitlines() == ["init extra", "update base"]
    st = root.status(shell)
    assert {s["name"] for s in st["services"] if s["enabled"]} == {"base", "extra"}

    # an unknown name in the request is reported, the rest still runs
    root.put("/fake-cred/amic.services", "nosuch\n")
    rc, out = root.run(f"{shell} {RUNNER} boot", env=env, check=None)
    assert rc == 1 and "unknown service 'nosuch'" in out, out
