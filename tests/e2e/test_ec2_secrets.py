"""A SECRET on the ec2 target, end to end: the INIT sees it, nothing keeps it.

The real CLI builds against moto in server mode and the instance stand-in
(``tests/harness/ec2/__init__.py``). The INIT echoes the secret (so the build output and
the runner's log would hold it if nothing masked it) and writes a digest of it
(proving it saw the value). Then every place a value could land is searched:
every disk the stand-in's instances wrote (live, terminated, layer snapshots,
images), the tags of every resource, every instance's console, the proxy's log
of every EC2 call's parameters, the build output, the artifact ``compile``
writes, the build memo and the local key and lint caches. The value may appear
nowhere; the mask ``***`` must appear where the INIT echoed it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from tests.harness.cli import run_amic
from tests.harness.ec2 import assert_clean, standin_ec2
from tests.harness.targets import grep

pytestmark = [pytest.mark.slow, pytest.mark.root]

SECRET = "s3cr3t-Qx7-rotate-me"
SEEN = hashlib.sha256(SECRET.encode()).hexdigest()[:16]

AMIFILE = """\
FROM debian:12
SECRET DEPLOY_TOKEN

SERVICE app
    INIT <<~EOF
        echo "token is $DEPLOY_TOKEN"
        printf %s "$DEPLOY_TOKEN" | sha256sum | cut -c1-16 > /etc/amic-token-seen
    EOF
    UPDATE echo app-update
"""


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    with standin_ec2(tmp_path_factory, strict=True) as fake:
        yield fake


def build(fake, project: Path, cache: Path, *extra: str,
          secret: str = SECRET) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AMIC_"))}
    env.update(fake.env, AMIC_CACHE_DIR=str(cache), DEPLOY_TOKEN=secret, NO_COLOR="1",
               XDG_CACHE_HOME=str(cache / "xdg"))
    return run_amic("build", "--target", "ec2", *fake.ssh_args(), "--ssh-user", "root",
                    "--poll-interval", "0.05", "--checkpoint", "all", "--ssh-timeout", "60",
                    "--console-timeout", "30", "--secret", "DEPLOY_TOKEN", *extra, "Amifile",
                    cwd=project, env=env, timeout=600)


def everything_ec2_knows(fake) -> str:
    """Tags of every resource, every console, and the parameters of every call seen."""
    ec2 = fake.client()
    parts = [repr(ec2.describe_tags()["Tags"])]
    for res in ec2.describe_instances()["Reservations"]:
        for inst in res["Instances"]:
            parts.append(repr(inst))
            out = ec2.get_console_output(InstanceId=inst["InstanceId"]).get("Output") or ""
            parts.append(out)
    parts.append(repr(ec2.describe_images(Owners=["self"])["Images"]))
    parts.append(repr(ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]))
    parts.append(repr(ec2.describe_key_pairs()["KeyPairs"]))
    parts.append(repr(fake.proxy.log))
    return "\n".join(parts)


def test_a_secret_reaches_the_init_and_nothing_keeps_it(fake, tmp_path):
    project, cache = tmp_path / "project", tmp_path / "cache"
    project.mkdir()
    cache.mkdir()
    (project / "Amifile").write_text(AMIFILE)
    fake.register_debian12()
    fake.proxy.reset()

    proc = build(fake, project, cache)
    assert proc.returncode == 0, proc.stderr
    assert_clean(fake)
    ami = proc.stdout.strip().splitlines()[-1]
    assert ami.startswith("ami-")
    # the INIT saw the value, and its echo was masked on the way out
    disks = fake.standin.disks()
    assert grep(SEEN.encode(), *disks), "the INIT did not see the secret"
    assert "token is ***" in proc.stderr, proc.stderr

    assert SECRET not in proc.stdout + proc.stderr
    assert grep(SECRET.encode(), *disks) == []       # no disk, layer snapshot or image
    known = everything_ec2_knows(fake)
    assert ami in known and "CreateSnapshot" in known   # the search does see the build
    assert SECRET not in known                         # no tag, console or API call
    assert grep(SECRET.encode(), cache) == []        # no memo, key file or cache entry
    # the layer's log was masked where it is kept (the final image drops the log)
    logs = [p for d in disks for p in Path(d).glob("var/log/amic/amic.log")]
    assert any("token is ***" in p.read_text(errors="replace") for p in logs), logs

    # the artifact a compile writes holds no value either (only the name, in no file)
    out = tmp_path / "stage2.tar"
    run_amic("compile", "-o", out, cwd=project, check=True,
             env={**os.environ, "DEPLOY_TOKEN": SECRET})
    assert SECRET.encode() not in out.read_bytes()

    # rotating the secret re-runs nothing: the final image is found, no instance starts
    fake.proxy.reset()
    fake.strict.consistency.settle()    # the tag-filter lag, as a user's next build
    rotated = build(fake, project, cache, secret="another-value-entirely")
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.strip().splitlines()[-1] == ami
    assert fake.proxy.count("RunInstances") == 0
