"""SECRET and per-service ARG on the local target, through the real CLI and the real runner.

One store for the module; the tests run in order: a missing secret fails before any
machine exists, a build whose INITs echo two secrets leaves the values nowhere (every
file of every layer, the memo, the artifact, the output: only ``***``), rotating the
secrets re-runs nothing, a per-service ARG re-runs that service and the later ones only,
and a failing INIT that prints a secret shows ``***`` in its error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.harness.cli import run_amic

pytestmark = [pytest.mark.slow, pytest.mark.root]

TOKEN = "tok-8c1f0e9a77d24b35"
BKEY = "bkey-5e2a91c0d6f34a18"
ROTATED = ("tok-rotated-0b3c5d7e9f", "bkey-rotated-1a2b3c4d5e")

AMIFILE = """\
FROM debian:12
ARG GREETING=hi
SECRET TOKEN
ENABLE c
SERVICE a
    INIT echo "a $GREETING token=$TOKEN"; echo a > /etc/amic-a-seen-token-len-${#TOKEN}
SERVICE b
    REQUIRES a
    ARG BARG=b1
    SECRET BKEY
    INIT <<~EOF
        echo "b sees token=$TOKEN bkey=$BKEY barg=$BARG"
        echo "again: $BKEY" >&2
        echo "barg=$BARG" > /etc/amic-b
    EOF
SERVICE c
    REQUIRES b
    INIT echo "c: barg=[${BARG:-}] bkey=[${BKEY:-}] token-len=${#TOKEN}" > /etc/amic-c
"""


@pytest.fixture(scope="module")
def store(local_store):
    return local_store


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    d = tmp_path_factory.mktemp("project")
    (d / "Amifile").write_text(AMIFILE)
    (d / "token.txt").write_text(TOKEN + "\n")   # one trailing newline: dropped
    return d


@pytest.fixture(scope="module")
def amic(store, project):
    def run(*args: str, check: bool = True, env: dict | None = None):
        full = {**os.environ, "AMIC_CACHE_DIR": str(store), "AMIC_TARGET": "local",
                **(env or {})}
        return run_amic(*args, cwd=project, env=full, timeout=900, check=check)

    return run


def statuses(proc) -> dict[str, str]:
    return {x["service"]: x["status"] for x in json.loads(proc.stdout)["layers"]}


def files_holding(root: Path, needles: list[str]) -> list[str]:
    """Every regular file under ``root`` (not following symlinks) whose bytes hold a needle."""
    hits = []
    raw = [n.encode() for n in needles]
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        if Path(dirpath) == root:
            dirnames[:] = [d for d in dirnames if d != "bases"]   # the shared debootstrap roots
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_symlink() or not path.is_file():
                continue
            data = path.read_bytes()
            hits.extend(f"{path}: {n!r}" for n, b in zip(needles, raw) if b in data)
    return hits


def secret_flags(token_value: str | None = None, bkey_value: str | None = None):
    args, env = [], {}
    if token_value is None:
        args += ["--secret", "id=TOKEN,src=token.txt"]
    else:
        env["TOKEN_SRC"] = token_value
        args += ["--secret", "id=TOKEN,env=TOKEN_SRC"]
    env["BKEY"] = bkey_value or BKEY
    args += ["--secret", "BKEY"]
    return args, env


def test_missing_secret_fails_before_any_machine(amic, store):
    proc = amic("build", "--secret", "BKEY", check=False, env={"BKEY": BKEY})
    assert proc.returncode == 2, proc.stderr
    assert "SECRET without a value: TOKEN (needed by a, b, c)" in proc.stderr
    assert "--secret id=TOKEN,src=FILE" in proc.stderr
    machines = store / "local" / "machines"
    assert not machines.exists() or not list(machines.iterdir())
    assert not (store / "local" / "keys").exists() or not list((store / "local" / "keys").iterdir())


def test_secret_values_are_found_nowhere(amic, store, project, tmp_path):
    args, env = secret_flags()
    proc = amic("build", "--json", *args, env=env)
    assert statuses(proc) == {"a": "RUN", "b": "RUN", "c": "RUN"}
    # the INIT echoed both: the build output shows them masked
    assert "b sees token=*** bkey=*** barg=b1" in proc.stderr
    assert "again: ***" in proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr and BKEY not in proc.stdout + proc.stderr
    # every file of every layer (checkpoints keep /var/log/amic/amic.log), keys, memo
    assert files_holding(store, [TOKEN, BKEY]) == []
    logs = list(store.glob("local/images/*/upper/var/log/amic/amic.log"))
    assert any("b sees token=*** bkey=*** barg=b1" in p.read_text() for p in logs), logs
    # the secrets reached the INITs that declare them, and only those
    uppers = list(store.glob("local/images/*/upper/etc"))
    seen = {p.name for u in uppers for p in u.iterdir() if p.name.startswith("amic-")}
    assert f"amic-a-seen-token-len-{len(TOKEN)}" in seen
    (c_file,) = [u / "amic-c" for u in uppers if (u / "amic-c").exists()]
    assert c_file.read_text() == f"c: barg=[] bkey=[] token-len={len(TOKEN)}\n"
    # the artifact, as compile writes it and as the image holds it
    out = tmp_path / "stage2.tar"
    amic("compile", "-o", str(out))
    assert TOKEN.encode() not in out.read_bytes() and BKEY.encode() not in out.read_bytes()
    manifests = list(store.glob("local/images/*/upper/var/lib/amic/stage2/manifest"))
    assert manifests and all("TOKEN" not in m.read_text() for m in manifests)   # no names either


def test_rotating_secrets_reruns_nothing(amic, store):
    args, env = secret_flags(*ROTATED)
    proc = amic("build", "--json", *args, env=env)
    assert set(statuses(proc).values()) == {"CACHED"}
    for memo in (store / "memo").iterdir():   # and without the memo: the keys say the same
        memo.unlink()
    proc = amic("build", "--json", *args, env=env)
    assert set(statuses(proc).values()) == {"CACHED"} and json.loads(proc.stdout)["cached"]


def test_service_arg_reruns_that_service_and_later_ones_only(amic, store):
    args, env = secret_flags()
    proc = amic("build", "--json", "--build-arg", "BARG=b2", *args, env=env)
    assert statuses(proc) == {"a": "CACHED", "b": "RUN", "c": "RUN"}
    assert "barg=b2" in proc.stderr
    # a global ARG is in every layer's key
    proc = amic("build", "--json", "--build-arg", "BARG=b2", "--build-arg", "GREETING=yo",
                *args, env=env)
    assert statuses(proc) == {"a": "RUN", "b": "RUN", "c": "RUN"}
    assert files_holding(store, [TOKEN, BKEY]) == []


def test_undeclared_build_arg_and_secret_are_warnings_naming_them(amic):
    args, env = secret_flags()
    proc = amic("build", "--build-arg", "NOPE=1", "--secret", "id=ALSO_NOPE,env=BKEY", *args,
                env=env)
    assert "build args not declared with ARG (ignored): NOPE" in proc.stderr
    assert "secrets not declared with SECRET (ignored): ALSO_NOPE" in proc.stderr


def test_missing_arg_is_an_error_unless_allowed(amic, project):
    text = AMIFILE.replace("ARG BARG=b1", "ARG BARG")
    (project / "Amifile").write_text(text)
    try:
        args, env = secret_flags()
        proc = amic("build", *args, check=False, env=env)
        assert proc.returncode == 2
        assert "ARG without a value or default: BARG" in proc.stderr
        proc = amic("build", "--json", "--allow-missing-args", *args, env=env)
        assert statuses(proc)["a"] == "CACHED"
        assert "built empty: --allow-missing-args" in proc.stderr
    finally:
        (project / "Amifile").write_text(AMIFILE)


def test_failing_init_shows_the_secret_masked(amic, store, project):
    text = AMIFILE.replace('echo "barg=$BARG" > /etc/amic-b',
                           'echo "about to fail with $TOKEN"; exit 3')
    (project / "Amifile").write_text(text)
    try:
        args, env = secret_flags()
        proc = amic("build", *args, check=False, env=env)
    finally:
        (project / "Amifile").write_text(AMIFILE)
    assert proc.returncode == 1, proc.stderr
    assert "service b failed (exit 3)" in proc.stderr
    assert "about to fail with ***" in proc.stderr
    assert TOKEN not in proc.stderr and BKEY not in proc.stderr
    assert files_holding(store, [TOKEN, BKEY]) == []


def test_ssh_host_keeps_no_secret_in_its_log_or_files(sshd_root, ssh_client_key, tmp_path):
    """In place (ssh) nothing like prepare-image runs: the host keeps /var/log/amic/amic.log,
    so the runner must have masked the values itself."""
    import io

    from amic.engine.build import BuildOptions, build
    from amic.engine.progress import Reporter
    from amic.targets.ssh.target import SshTarget

    project = tmp_path / "p"
    project.mkdir()
    (project / "Amifile").write_text(AMIFILE)
    target = SshTarget(f"root@127.0.0.1:{sshd_root.port}", key_file=str(ssh_client_key[1]),
                       known_hosts=str(tmp_path / "known"), accept_new=True,
                       connect_options={"allow_agent": False})
    out = io.StringIO()
    result = build(target, BuildOptions(amifile=str(project / "Amifile"),
                                        secrets={"TOKEN": TOKEN, "BKEY": BKEY}),
                   Reporter(out, mode="plain"))
    assert [r.status for r in result.layers] == ["RUN", "RUN", "RUN"]
    assert "b sees token=*** bkey=*** barg=b1" in out.getvalue()
    assert TOKEN not in out.getvalue() and BKEY not in out.getvalue()
    log = sshd_root.path("/var/log/amic/amic.log").read_text()
    assert "b sees token=*** bkey=*** barg=b1" in log and "again: ***" in log
    assert files_holding(Path(sshd_root.upper), [TOKEN, BKEY]) == []
