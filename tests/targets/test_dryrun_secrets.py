"""``amic build --dry-run`` needs no SECRET value; the real build still refuses without one.

Through the real ``amic`` command on the local target (the shared debootstrap base):
a dry run of an Amifile with a SECRET and no value prints the plan, names the secret
and exits 0, writing nothing; the same command without ``--dry-run`` fails with the
message that names the secret and how to give it, before anything is launched.
"""

from __future__ import annotations

import json

import pytest

from tests.harness.stores import listing, watched_dirs

WITH_SECRET = """\
FROM debian:12

SERVICE plain
    INIT echo plain > /etc/dry-plain

SERVICE api
    REQUIRES plain
    SECRET API_TOKEN
    INIT test -n "$API_TOKEN" && echo api > /etc/dry-api
"""


@pytest.mark.slow
@pytest.mark.root
def test_dry_run_without_secret_value_prints_the_plan(local_subject, amic_cli, amic_cache):
    work = local_subject.workdir / "secret-dry"
    work.mkdir(exist_ok=True)
    (work / "Amifile").write_text(WITH_SECRET)
    amifile = str(work / "Amifile")
    env = {"AMIC_CACHE_DIR": str(amic_cache)}
    before = listing(*watched_dirs(amic_cache))

    proc = amic_cli("build", "--target", "local", "--dry-run", amifile, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "SECRET without a value" not in proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("[2/2] api") and " RUN " in line for line in lines), proc.stdout
    assert "secrets the build would need: API_TOKEN (by api)" in lines, proc.stdout
    assert any(line.startswith("not given here (the build would refuse without them): "
                               "API_TOKEN;") for line in lines), proc.stdout
    assert "does not exist: a build would launch from" in lines[-1]

    proc = amic_cli("build", "--target", "local", "--dry-run", "--json", amifile, env=env)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["secrets"] == [{"name": "API_TOKEN", "services": ["api"], "given": False}]

    # given by name from the environment: listed, not missing; the value is printed nowhere
    value = "dry-run-secret-value-31337"
    proc = amic_cli("build", "--target", "local", "--dry-run", "--secret", "API_TOKEN", amifile,
                    env={**env, "API_TOKEN": value})
    assert proc.returncode == 0, proc.stderr
    assert "secrets the build would need: API_TOKEN (by api)" in proc.stdout
    assert "not given here" not in proc.stdout
    assert value not in proc.stdout + proc.stderr
    assert listing(*watched_dirs(amic_cache)) == before

    # the real build refuses, naming the secret, before it launches anything
    proc = amic_cli("build", "--target", "local", "--progress", "plain", amifile, env=env)
    assert proc.returncode != 0 and proc.stdout == ""
    assert "SECRET without a value: API_TOKEN (needed by api)" in proc.stderr, proc.stderr
    assert "--secret id=API_TOKEN,src=FILE" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "launching" not in proc.stderr
