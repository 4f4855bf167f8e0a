"""End to end on the local target: real debootstrap base, real package installs, the real runner.

The tests share one store (module-scoped) and run in order: cold build,
unchanged rebuild, a changed middle INIT, a changed UPDATE, --no-cache, boot,
export, kill mid-layer, prune. The debootstrap base is shared with every other
test run on this machine (``/var/cache/amic/bases``), so it is made at most once.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from tests.harness.cli import AMIC, run_amic

pytestmark = [pytest.mark.slow, pytest.mark.root]

AMIFILE = """\
FROM debian:12
ARG GREETING=hello
ENABLE web
SERVICE base
    PACKAGES jq
    INIT echo "base $GREETING" > /etc/amic-base
SERVICE web
    REQUIRES base
    PACKAGES hello
    INIT <<~EOF
        hello > /etc/amic-web
        echo '{"ok": true}' | jq -r .ok > /etc/amic-web-jq
    EOF
    UPDATE echo update-v1 > /var/lib/amic-web-updated
SERVICE test
    REQUIRES web
    INIT echo test-initialised > /etc/amic-test
"""

HEX64 = re.compile(r"^[0-9a-f]{64}$")


@pytest.fixture(scope="module")
def store(local_store):
    return local_store


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    d = tmp_path_factory.mktemp("project")
    (d / "Amifile").write_text(AMIFILE)
    return d


@pytest.fixture(scope="module")
def amic(store, project):
    def run(*args: str, check: bool = True, amifile_text: str | None = None):
        if amifile_text is not None:
            (project / "Amifile").write_text(amifile_text)
        env = {**os.environ, "AMIC_CACHE_DIR": str(store), "AMIC_TARGET": "local"}
        return run_amic(*args, cwd=project, env=env, timeout=900, check=check)

    return run


def layers(proc) -> dict[str, tuple[str, str]]:
    doc = json.loads(proc.stdout)
    return {x["service"]: (x["status"], x["reason"]) for x in doc["layers"]}


def no_leftovers(store: Path) -> None:
    import tempfile

    assert not list(Path(tempfile.gettempdir()).glob("amic-stage2-*")), "stage2 tarball leaked"
    mounts = Path("/proc/mounts").read_text()
    assert str(store) not in mounts, mounts
    for proc_dir in Path("/proc").iterdir():
        if not proc_dir.name.isdigit():
            continue
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        assert str(store) not in cmdline, f"stray process {proc_dir.name}: {cmdline}"


def test_cold_build(amic, store):
    proc = amic("build", "--json")
    doc = json.loads(proc.stdout)
    assert HEX64.match(doc["image_id"])
    assert layers(proc) == {"base": ("RUN", "first build"), "web": ("RUN", "first build")}
    assert all(x["checkpoint"] for x in doc["layers"])  # local default: every layer
    assert "amic: base: init: begin" in proc.stderr or "base |" in proc.stderr
    # plain output (not a TTY): one line per layer with status and time
    assert re.search(r"\[2/2\] web\s+RUN\s+[\d.]+s", proc.stderr)


def test_unchanged_rebuild_runs_nothing(amic, store):
    first = amic("build").stdout.strip()
    again = amic("build")
    assert again.stdout.strip() == first and HEX64.match(first)
    assert "RUN" not in again.stderr
    # without the memo the engine finds the final key in the cache itself
    for memo in (store / "memo").iterdir():
        memo.unlink()
    proc = amic("build", "--json")
    doc = json.loads(proc.stdout)
    assert doc["cached"] and doc["image_id"] == first
    assert {s for s, _ in layers(proc).values()} == {"CACHED"}


def test_changed_middle_init_reruns_only_it(amic):
    text = AMIFILE.replace("hello > /etc/amic-web", "hello -g changed > /etc/amic-web")
    proc = amic("build", "--json", amifile_text=text)
    assert layers(proc) == {"base": ("CACHED", layers(proc)["base"][1]),
                            "web": ("RUN", "init changed")}


def test_update_only_change_reruns_no_init(amic):
    before = amic("build").stdout.strip()
    text = AMIFILE.replace("hello > /etc/amic-web", "hello -g changed > /etc/amic-web") \
        .replace("update-v1", "update-v2")
    proc = amic("build", "--json", amifile_text=text)
    doc = json.loads(proc.stdout)
    assert {s for s, _ in layers(proc).values()} == {"CACHED"}
    assert not doc["cached"] and doc["image_id"] != before
    assert "init: begin" not in proc.stderr


def test_no_cache_runs_every_layer(amic):
    proc = amic("build", "--no-cache", "--json")
    assert layers(proc) == {"base": ("RUN", "--no-cache"), "web": ("RUN", "--no-cache")}


def test_boot_runs_update_and_extra_service(amic, store):
    image = amic("build").stdout.strip()
    proc = amic("run", image[:12], "--service", "test", "--timeout", "180")
    status = proc.stdout
    rows = {line.split()[0]: line for line in status.splitlines()[2:] if line.strip()}
    assert "ok" in rows["test"].split()[2], status          # initialised at boot
    assert re.search(r"web\s+yes\s+ok .* ok ", rows["web"]), status  # UPDATE ran
    no_leftovers(store)


def test_export(amic, store, tmp_path):
    out = tmp_path / "image.tar"
    amic("export", "latest", "-o", str(out))
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
        assert "./etc/amic-web" in names and "./usr/bin/jq" in names
        assert tar.extractfile("./etc/amic-web-jq").read() == b"true\n"
        assert "./var/lib/amic/stage2/amic" in names


def test_failure_reports_service_line_and_output(amic):
    text = AMIFILE.replace("hello > /etc/amic-web", "echo about-to-fail; false")
    proc = amic("build", check=False, amifile_text=text)
    assert proc.returncode == 1
    assert "service web failed" in proc.stderr
    assert "Amifile:11" in proc.stderr  # the failing command's line in the INIT body
    assert "\n    echo about-to-fail; false\n" in proc.stderr  # and its text
    assert "about-to-fail" in proc.stderr
    assert proc.stdout == ""


SLOW = AMIFILE.replace("ENABLE web", "ENABLE slow") + """\
SERVICE slow
    REQUIRES web
    INIT <<~EOF
        echo sleeping
        sleep 120
    EOF
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_kill_mid_layer_leaves_nothing_behind(amic, store, project, sig):
    (project / "Amifile").write_text(SLOW)
    env = {**os.environ, "AMIC_CACHE_DIR": str(store), "AMIC_TARGET": "local"}
    proc = subprocess.Popen([AMIC, "build",
                             "--progress", "plain"], cwd=project, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        seen.append(line)
        if "amic: slow: init: begin" in line:
            break
        assert time.monotonic() < deadline, "".join(seen)
    else:
        pytest.fail("build ended before the slow layer began:\n" + "".join(seen))
    time.sleep(1)
    proc.send_signal(sig)
    rc = proc.wait(timeout=60)
    proc.stderr.close()
    proc.stdout.close()
    assert rc == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    time.sleep(0.5)  # the kernel delivers PDEATHSIG asynchronously
    no_leftovers(store)
    if sig == signal.SIGINT:
        assert not any((store / "local" / "machines").iterdir())
    # the cache is intact: a following build reuses the finished layers
    done = amic("build", "--json", amifile_text=SLOW.replace("sleep 120", f"echo after-{sig.name}"))
    got = layers(done)
    assert got["base"][0] == "CACHED" and got["web"][0] == "CACHED"
    assert got["slow"][0] == "RUN"


def test_images_and_prune(amic, store):
    listing = json.loads(amic("images", "--all", "--json").stdout)
    kinds = {row["kind"] for row in listing}
    assert {"final", "layer", "base"} <= kinds
    # a base's debootstrap root lives under bases/, not in the store: its size, not 0
    bases = [row for row in listing if row["kind"] == "base"]
    assert all(row["size"] > 20_000_000 for row in bases), bases
    # the module's project has no identity (no NAME, no git): only --force prunes its images
    amic("prune", "--keep", "1")
    assert json.loads(amic("images", "--all", "--json").stdout) == listing
    amic("prune", "--keep", "1", "--force")
    after = json.loads(amic("images", "--all", "--json").stdout)
    assert len(after) < len(listing)
    assert not (store / "local" / "machines").exists() or \
        not any((store / "local" / "machines").iterdir())
    # the newest image still builds from cache
    proc = amic("build", "--json")
    assert json.loads(proc.stdout)["cached"]


def test_images_carry_project_names_and_prune_by_name_keeps_the_others(amic, project, tmp_path):
    # Two more projects whose files are also called Amifile: one named by NAME, one by
    # --name (normalised, and over its NAME); their UPDATE differs, so each has its own
    # final image. The module's project is named by its directory.
    shop = tmp_path / "shop"
    shop.mkdir()
    (shop / "Amifile").write_text("NAME storefront\n" + AMIFILE.replace("update-v1", "update-shop"))
    team = tmp_path / "team"
    team.mkdir()
    (team / "Amifile").write_text("NAME ignored\n" + AMIFILE.replace("update-v1", "update-team"))
    amic("build", "--json", str(shop / "Amifile"))
    amic("build", "--json", "--name", "Team App!", str(team / "Amifile"))
    amic("build", "--json")
    finals = {row["name"]: row["id"] for row in json.loads(amic("images", "--json").stdout)}
    assert {project.name, "storefront", "team-app"} <= set(finals), finals
    assert "ignored" not in finals
    table = amic("images").stdout
    assert "storefront" in table and "team-app" in table
    only = json.loads(amic("images", "--json", "--name", "team-app").stdout)
    assert [row["id"] for row in only] == [finals["team-app"]]
    amic("prune", "--name", "storefront", "--all")
    after = json.loads(amic("images", "--all", "--json").stdout)
    ids = {row["id"] for row in after}
    assert finals["storefront"] not in ids
    assert finals[project.name] in ids and finals["team-app"] in ids
    assert {row["kind"] for row in after} >= {"layer", "base"}  # what the others sit on stays
    assert json.loads(amic("build", "--json").stdout)["cached"]


def test_unknown_from_points_at_the_from_line(amic, store, tmp_path):
    # The target never sees positions; the engine puts the FROM line back on its error.
    path = tmp_path / "Amifile"
    path.write_text("# no such base\n  FROM plan9:4\nSERVICE a\n    INIT true\n")
    proc = amic("build", str(path), check=False)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.splitlines()
    heads = [i for i, line in enumerate(lines) if line.startswith(f"{path}:2:3: ")]
    assert heads, proc.stderr
    head = heads[0]
    assert "cannot make base image 'plan9:4'" in lines[head]
    assert "debian:12" in lines[head]                  # says what it can make
    assert lines[head + 1].strip() == "FROM plan9:4"
    assert lines[head + 2] == "    " + "  ^"            # the caret under FROM
    assert proc.stdout == ""
    no_leftovers(store)


def test_amicignore_edit_is_never_answered_from_the_memo(amic, store, tmp_path):
    # The memo answers an unchanged rebuild without parsing; a .amicignore added later
    # changes what COPY takes, so the next build must not be "unchanged" with the old image.
    proj = tmp_path / "proj"
    (proj / "conf").mkdir(parents=True)
    (proj / "conf" / "app.conf").write_text("setting=1\n")
    (proj / "conf" / "secret.key").write_text("do-not-ship\n")
    (proj / "Amifile").write_text("FROM debian:12\nSERVICE app\n    COPY conf/ /etc/app\n"
                                  "    INIT test -f /etc/app/app.conf\n")
    first = json.loads(amic("build", "--json", str(proj / "Amifile")).stdout)
    again = json.loads(amic("build", "--json", str(proj / "Amifile")).stdout)
    assert again["image_id"] == first["image_id"] and again["cached"]
    (proj / ".amicignore").write_text("**/*.key\n")   # dockerignore: patterns start at the top
    third = json.loads(amic("build", "--json", str(proj / "Amifile")).stdout)
    assert third["image_id"] != first["image_id"]
    out = tmp_path / "image.tar"
    amic("export", third["image_id"], "-o", str(out))
    with tarfile.open(out) as tar:
        names = set(tar.getnames())
    assert any(n.endswith("etc/app/app.conf") for n in names)
    assert not any(n.endswith("secret.key") for n in names)


def test_build_context_option(amic, store, tmp_path):
    # --context: COPY sources stay relative to the Amifile and must resolve inside the
    # context, for build as for compile (a spec directory beside the files it ships)
    ctx = tmp_path / "ctx"
    (ctx / "files").mkdir(parents=True)
    (ctx / "files" / "motd").write_text("from the context\n")
    amifile = tmp_path / "spec" / "Amifile"
    amifile.parent.mkdir()
    amifile.write_text("FROM debian:12\nSERVICE app\n    COPY ../ctx/files/motd /etc/motd-ctx\n"
                       "    INIT grep -q 'from the context' /etc/motd-ctx\n")
    refused = amic("build", str(amifile), check=False)      # outside the Amifile's directory
    assert refused.returncode == 1 and f"{amifile}:3:10:" in refused.stderr, refused.stderr
    assert "outside the build context" in refused.stderr
    built = amic("build", "--json", "--context", str(tmp_path), str(amifile))
    assert json.loads(built.stdout)["layers"][0]["status"] == "RUN"
    no_leftovers(store)


SHARED_BASE = """\
FROM debian:12
SERVICE base
    INIT <<~EOF
        sleep 2
        echo shared > /etc/amic-shared
    EOF
SERVICE {name}
    REQUIRES base
    INIT {init}
"""


def test_a_build_sharing_a_prefix_goes_on_from_its_checkpoint(store, tmp_path):
    """Two projects share their first service. The second waits for that layer's lease,
    not for the first build's end: the lease goes when the layer's checkpoint exists."""
    env = {**os.environ, "AMIC_CACHE_DIR": str(store), "AMIC_TARGET": "local"}
    tag = f"{time.time_ns()}"      # a base layer no earlier test made
    dirs = {}
    for name, init in (("slow", "sleep 8"), ("quick", "echo quick")):
        d = tmp_path / name
        d.mkdir()
        (d / "Amifile").write_text(SHARED_BASE.replace("echo shared", f"echo shared {tag}")
                                   .format(name=name, init=init))
        dirs[name] = d
    slow = subprocess.Popen([AMIC, "build", "--progress", "plain", "--json"], cwd=dirs["slow"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        seen = ""
        deadline = time.monotonic() + 120
        while "base: init: begin" not in seen and time.monotonic() < deadline:
            line = slow.stderr.readline()
            assert line, seen
            seen += line
        quick = run_amic("build", "--progress", "plain", "--json", cwd=dirs["quick"], env=env,
                         timeout=300)
        assert quick.returncode == 0, quick.stderr
        assert "waiting for another build" in quick.stderr, quick.stderr
        assert slow.poll() is None, "the second build waited for the whole first build"
        assert layers(quick)["base"][0] == "CACHED", quick.stdout   # the first build's layer
        out, err = slow.communicate(timeout=300)
        assert slow.returncode == 0, seen + err
        assert layers(subprocess.CompletedProcess([], 0, out, ""))["base"][0] == "RUN"
    finally:
        if slow.poll() is None:
            slow.kill()
            slow.wait()
