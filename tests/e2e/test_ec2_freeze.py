"""Layer checkpoints and the freeze guard through the real CLI against the EC2 stand-in.

The stand-in's instances are overlay roots on the host's disk (``tests/harness/ec2/__init__.py``):
the guard the build runs before each CreateSnapshot must refuse to freeze them (it only
freezes a whole ext3/ext4/xfs mounted on ``/`` that is PID 1's root), and the build goes
on with ``sync`` only, saying why. The freezing itself is tested on a loop-mounted ext4
(``tests/runtime/test_freeze_guard.py``, ``tests/targets/test_freeze_ssh.py``).
"""

from __future__ import annotations

import os
import re

import pytest

from tests.harness.cli import run_amic
from tests.harness.ec2 import assert_clean, standin_ec2

pytestmark = [pytest.mark.slow, pytest.mark.root]

AMIFILE = """\
FROM debian:12
SERVICE one
    INIT echo one > /etc/amic-freeze-one
SERVICE two
    REQUIRES one
    INIT echo two > /etc/amic-freeze-two
"""


def test_standin_root_is_refused_and_checkpoints_sync_only(tmp_path_factory):
    with standin_ec2(tmp_path_factory) as fake:
        fake.register_debian12()
        project = tmp_path_factory.mktemp("project")
        (project / "Amifile").write_text(AMIFILE)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AMIC_"))}
        env.update(fake.env, NO_COLOR="1", XDG_CACHE_HOME=str(project / "xdg"),
                   AMIC_CACHE_DIR=str(project / "cache"))
        proc = run_amic("build", "--target", "ec2", *fake.ssh_args(), "--ssh-user", "root",
                        "--poll-interval", "0.05", "--checkpoint", "all", "--ssh-timeout", "60",
                        "--console-timeout", "30", "Amifile", cwd=project, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
        lines = re.findall(r"layer snapshot snap-\S+ of vol-\S+ \((.*?); (?:pending|completed)",
                           proc.stderr)
        assert len(lines) == 2, proc.stderr
        for how in lines:
            assert how.startswith("not frozen: ") and how.endswith("; after sync"), how
            assert re.search(r"/ is overlay|/ is not a mount point of its own", how), how
        # snapshots made (the strict stand-in refuses quick ones per volume; amic retries)
        assert len(fake.proxy.calls_of("CreateSnapshot", answered=True)) == 2
        assert_clean(fake)
