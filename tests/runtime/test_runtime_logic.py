"""The stage2 runner's own logic under dash, busybox sh and bash --posix.

Real compiler output (parser -> resolve -> plan -> artifact) runs in a chroot of
the cached Debian base with a stub package manager (a fake ``apt-get`` first in
PATH that records its calls), so these tests are fast and need no network:
manifest reading, ordering and dependency closure, init records and skips,
changed init, update failure propagation, ENV/ARG handling, the lock, boot-time
requests, the rc.local fallback and prepare-image.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.harness import tools
from tests.harness.roots import RUNNER, SHELLS, Root, compile_stage2, markers

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / "runtime" / "amic"

STUB_APT = """#!/bin/sh
echo "$*" >> /var/log/stub-apt.log
for a; do case $a in missing-*) echo "E: Unable to locate package $a" >&2; exit 100 ;; esac; done
exit 0
"""

AMIFILE = """\
ENV GREETING="hi there"
ARG TOKEN
ENABLE base web other leaf

SERVICE base
    PACKAGES curl apt:jq rpm:jq-rpm apk:jq-apk
    COPY --mode=0600 conf/app.conf /etc/app/app.conf
    COPY tree/ /srv/tree
    INIT <<~EOF
        echo "init base $AMIC_SERVICE $AMIC_PHASE $GREETING" >> /root/order
        [ -n "$AMIC_INSTANCE_ID" ]
        [ "$AMIC_DATA_DIR" = /var/lib/amic/data/base ]
        printf '%s\\n' "$TOKEN" > "$AMIC_DATA_DIR/token-seen"
    EOF
    UPDATE echo "update base $AMIC_PHASE" >> /root/order

SERVICE web
    REQUIRES base
    PACKAGES nginx-light
    INIT echo "init web" >> /root/order
    UPDATE echo "update web" >> /root/order

SERVICE other
    INIT echo "init other" >> /root/order
    UPDATE <<~EOF
        echo "update other" >> /root/order
        exit 3
    EOF

SERVICE leaf
    REQUIRES other
    INIT echo "init leaf" >> /root/order
    UPDATE echo "update leaf" >> /root/order

SERVICE extra
    REQUIRES web
    INIT echo "init extra" >> /root/order
    UPDATE echo "update extra" >> /root/order
"""
FILES = {"conf/app.conf": "listen=80\n", "tree/a.txt": "a\n", "tree/.hidden": "h\n",
         "tree/sub/b.sh": ("#!/bin/sh\n", 0o755)}
SECRET = "s3cr3t-token-value"


def norm(ms: list[str]) -> list[str]:
    """Markers with durations and timestamps made comparable."""
    return [re.sub(r"\d{4}-\d\d-\d\dT[\d:]+Z", "T", re.sub(r" ok \d+s$", " ok Ns", m)) for m in ms]


def amifile_line(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.fixture(scope="module")
def stub_root_lower(tmp_path_factory) -> Path:
    """A layer over the base with the stub apt-get and busybox (with its applets in /bb)."""
    layer = tmp_path_factory.mktemp("stub") / "upper"
    root = Root(layer.parent)
    root.put("/usr/local/sbin/apt-get", STUB_APT, 0o755)
    root.put("/usr/bin/busybox", Path(shutil.which("busybox")).read_bytes(), 0o755)
    root.run("mkdir -p /bb && /usr/bin/busybox --install -s /bb")
    return layer


def make_root(tmp_path: Path, stub_lower: Path) -> Root:
    root = Root(tmp_path)
    root.lowers = [stub_lower, root.base]
    return root


def runner(shell_id: str) -> tuple[str, dict]:
    env = {"TOKEN": SECRET}
    if shell_id == "busybox-userland":
        return f"PATH=/usr/local/sbin:/bb /usr/bin/busybox sh {RUNNER}", env
    return f"{SHELLS[shell_id]} {RUNNER}", env


def test_shellcheck_clean() -> None:
    exe = tools.pinned_shellcheck()
    files = [RUNTIME, REPO / "runtime/boot/rc.local.sh"]
    proc = subprocess.run([exe, "-s", "sh", *map(str, files)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("shell", ["dash", "busybox sh", "bash --posix", "sh"])
def test_parses_under_each_shell(shell: str) -> None:
    tools.require(shell.split()[0])
    proc = subprocess.run([*shell.split(), "-n", str(RUNTIME)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_no_local_and_no_bashisms_in_source() -> None:
    text = RUNTIME.read_text()
    code = "\n".join(line.split(" #")[0] for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"^\s*local\s", code, re.M)
    assert not re.search(r"(^|[\s;&|])\[\[\s", code, re.M)
    assert not re.search(r"(^|[\s;&|])(source|function|declare|typeset)\s", code, re.M)
    for bashism in ("$'", "pipefail", "${!", "<<<", "&>"):
        assert bashism not in code, bashism


@pytest.mark.root
@pytest.mark.parametrize("shell_id", list(SHELLS))
def test_runner_logic(shell_id: str, tmp_path: Path, stub_root_lower: Path) -> None:
    root = make_root(tmp_path, stub_root_lower)
    amic, env = runner(shell_id)
    tar = compile_stage2(tmp_path / "ctx", AMIFILE, FILES)
    root.install_stage2(tar, SHELLS[shell_id], env=env)

    # init: the enabled set, dependencies first, one package transaction per service
    rc, out = root.run(f"{amic} init", env=env, check=None)
    assert rc == 0, out
    assert norm(markers(out)) == [m for svc in ("base", "web", "other", "leaf")
                                  for m in (f"{svc}: init: begin", f"{svc}: init: ok Ns")]
    assert root.read("/root/order").splitlines() == [
        "init base base init hi there", "init web", "init other", "init leaf"]
    installs = [line for line in root.read("/var/log/stub-apt.log").splitlines() if " install " in f" {line} "]
    assert len(installs) == 2
    head, _, names = installs[0].partition("install --no-install-recommends ")
    assert sorted(names.split()) == ["curl", "jq"]
    assert installs[1].endswith("install --no-install-recommends nginx-light")
    assert "-y" in installs[0].split()
    # COPY payloads with their modes; directory contents merged, dotfiles included
    conf = root.file("/etc/app/app.conf")
    assert conf.read_text() == "listen=80\n" and conf.stat().st_mode & 0o777 == 0o600
    assert root.read("/srv/tree/a.txt") == "a\n" and root.read("/srv/tree/.hidden") == "h\n"
    assert root.file("/srv/tree/sub/b.sh").stat().st_mode & 0o777 == 0o755
    # ARG values reach scripts through the environment only: never into state or logs
    assert root.read("/var/lib/amic/data/base/token-seen") == SECRET + "\n"
    rc, out = root.run(f"grep -rl {SECRET} /var/lib/amic/stage2 /var/lib/amic/init /var/log/amic || true")
    assert out.strip() == ""
    st = root.status(SHELLS[shell_id])
    by = {s["name"]: s for s in st["services"]}
    assert by["base"]["init"]["state"] == "current" and by["base"]["init"]["hash"] == by["base"]["hash"]
    assert by["extra"]["enabled"] is False and by["extra"]["init"]["state"] == "missing"

    # init again: everything skipped, no package manager call
    rc, out = root.run(f"{amic} init", env=env, check=None)
    assert rc == 0 and all("skipped (initialised" in m for m in markers(out)) and len(markers(out)) == 4
    assert len(root.read("/var/log/stub-apt.log").splitlines()) == len(installs) + \
        sum(1 for line in root.read("/var/log/stub-apt.log").splitlines() if "update" == line.split()[-1])

    # update: one failure does not stop unrelated services; its dependents are skipped
    root.run("rm /root/order")
    rc, out = root.run(f"{amic} update", env=env, check=None)
    assert rc == 1, out
    other_line = amifile_line(AMIFILE, "        exit 3")  # the failing command, not its UPDATE
    ms = markers(out)
    assert "base: update: ok Ns" in norm(ms) and "web: update: ok Ns" in norm(ms)
    assert f"other: update: FAILED exit 3 at Amifile:{other_line}" in ms
    assert "leaf: update: skipped (requires other, which failed)" in ms
    assert root.read("/root/order").splitlines() == ["update base update", "update web", "update other"]
    by = {s["name"]: s for s in root.status(SHELLS[shell_id])["services"]}
    assert by["other"]["update"]["result"] == "failed" and by["other"]["update"]["exit"] == "3"
    assert by["leaf"]["update"]["result"] == "skipped"
    assert by["base"]["update"]["result"] == "ok"

    # boot with a drop-in request: the new service (deps already there) is initialised, then all update
    root.put("/etc/amic/services.d/test", "extra   # requested for this machine\n")
    root.run("rm /root/order")
    rc, out = root.run(f"{amic} boot", env=env, check=None)
    assert rc == 1, out     # `other` still fails its update
    assert root.read("/root/order").splitlines() == [
        "init extra", "update base update", "update web", "update other", "update extra"]
    ms = markers(out)
    assert ms.index("extra: init: begin") < ms.index("base: update: begin")
    by = {s["name"]: s for s in root.status(SHELLS[shell_id])["services"]}
    assert by["extra"]["enabled"] is True and by["extra"]["init"]["state"] == "current"

    # a changed INIT: that service re-runs (announced), the others keep their records
    tar2 = compile_stage2(tmp_path / "ctx2", AMIFILE.replace('"init web"', '"init web v2"'), FILES)
    root.install_stage2(tar2, SHELLS[shell_id], env=env)
    root.run("rm /root/order")
    rc, out = root.run(f"{amic} init web", env=env, check=None)
    assert rc == 0, out
    assert re.search(r"amic: web: init changed since \S+Z \(hash \w{12} -> \w{12}\): re-running", out), out
    assert norm(markers(out)) == ["base: init: skipped (initialised T)", "web: init: begin",
                                  "web: init: ok Ns"]
    assert root.read("/root/order") == "init web v2\n"

    # usage errors: exit 2 and a clear message
    rc, out = root.run(f"{amic} init nosuch", env=env, check=None)
    assert rc == 2 and "unknown service 'nosuch'" in out
    rc, out = root.run(f"{amic} frobnicate", env=env, check=None)
    assert rc == 2

    # logs: the file log has the same markers
    log = root.read("/var/log/amic/amic.log")
    assert "amic: web: init: begin" in log and "== " in log


@pytest.mark.root
@pytest.mark.parametrize("shell_id", ["dash", "busybox-userland"])
def test_concurrent_runs_are_serialised(shell_id: str, tmp_path: Path, stub_root_lower: Path) -> None:
    """Two runs at once take turns (flock on Debian, the mkdir lock with busybox applets only)."""
    root = make_root(tmp_path, stub_root_lower)
    amic, env = runner(shell_id)
    text = "".join(f"""
SERVICE {s}
    INIT <<~EOF
        echo "start {s}" >> /root/lock-order
        sleep 1
        echo "end {s}" >> /root/lock-order
    EOF
""" for s in ("a", "b"))
    root.install_stage2(compile_stage2(tmp_path / "ctx", text), SHELLS[shell_id], env=env)
    rc, out = root.run(f"{amic} init a & {amic} init b & wait", env=env, check=None)
    lines = root.read("/root/lock-order").splitlines()
    assert len(lines) == 4, out
    assert lines[0].split()[1] == lines[1].split()[1] and lines[0].startswith("start") \
        and lines[1].startswith("end"), lines
    assert "waiting for another amic run" in out

    if shell_id == "busybox-userland":  # a lock left by a dead process is taken over
        root.run("mkdir -p /var/lib/amic/lock.d && echo '99999 some-other-boot' > /var/lib/amic/lock.d/owner")
        rc, out = root.run(f"{amic} update", env=env, check=None)
        assert rc == 0 and "removing stale lock of pid 99999" in out, out
        assert not root.exists("/var/lib/amic/lock.d")


@pytest.mark.root
def test_rc_local_fallback_and_prepare_image(tmp_path: Path, stub_root_lower: Path) -> None:
    root = make_root(tmp_path, stub_root_lower)
    amic, env = runner("dash")
    text = """
SERVICE app
    INIT echo init >> /root/app-log
    UPDATE echo "update $AMIC_INSTANCE_ID" >> /root/app-log
"""
    root.install_stage2(compile_stage2(tmp_path / "ctx", text), "dash", env=env)
    root.run(f"{amic} init", env=env)

    # machines without systemd: a line in /etc/rc.local runs boot
    rc, out = root.run(f"{amic} install-boot-hook --fallback && {amic} install-boot-hook --fallback",
                       env=env, check=None)
    assert rc == 0, out
    rc_local = root.read("/etc/rc.local")
    assert rc_local.count("amic-boot-hook") == 1 and rc_local.rstrip().endswith("exit 0")
    root.run("sed -i 's#>/dev/console#>/root/boot-out#' /etc/rc.local && sh /etc/rc.local")
    assert "amic: app: update: ok" in root.read("/root/boot-out")
    assert root.read("/root/app-log").splitlines()[-1].startswith("update ")

    # prepare-image: what must not be baked goes, init records stay
    build_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBuildKeyBlob amic-build-1234"
    keep_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUserKeyBlob user@laptop"
    root.put("/root/.ssh/authorized_keys", f"{keep_key}\n{build_key}\n", 0o600)
    for name in ("ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "ssh_host_rsa_key"):
        root.put(f"/etc/ssh/{name}", "KEY\n", 0o600)
    root.put("/etc/ssh/sshd_config", "# keep me\n")
    root.put("/etc/machine-id", "0123456789abcdef0123456789abcdef\n")
    root.put("/root/.bash_history", "aws configure\n")
    root.put("/var/log/syslog.1", "old\n")
    root.put("/var/log/dpkg.log", "lots\n")
    rc, out = root.run(f"{amic} prepare-image --remove-authorized-key '{build_key}'", env=env, check=None)
    assert rc == 0, out
    assert root.read("/root/.ssh/authorized_keys") == keep_key + "\n"
    assert root.file("/root/.ssh/authorized_keys").stat().st_mode & 0o777 == 0o600
    rc, out = root.run("ls /etc/ssh/")
    assert out.split() == ["sshd_config"]
    assert root.read("/etc/machine-id") == ""
    assert not root.exists("/root/.bash_history") and not root.exists("/var/log/syslog.1")
    assert root.read("/var/log/dpkg.log") == ""
    assert not root.exists("/var/lib/amic/instance") and not root.exists("/var/log/amic/amic.log")
    assert root.exists("/var/lib/amic/init/app") and root.exists("/var/lib/amic/stage2/amic")

    # the next boot starts a fresh instance state and does not re-run INIT
    root.run("rm /root/app-log")
    rc, out = root.run(f"{amic} boot", env=env, check=None)
    assert rc == 0, out
    assert root.read("/root/app-log").splitlines()[0].startswith("update ")
    st = root.status("dash")
    assert st["services"][0]["update"]["result"] == "ok" and st["instance_id"]
    json.dumps(st)


STUB_CURL = r"""#!/bin/sh
echo "$*" >> /var/log/stub-curl.log
for a; do url=$a; done
case $url in
    */latest/api/token) echo tok ;;
    */latest/meta-data/instance-id) echo i-0abc123 ;;
    */latest/meta-data/tags/instance/amic:services) echo extra ;;
    */latest/user-data) printf '#cloud-config\n# amic-services: solo\n' ;;
    *) exit 22 ;;
esac
"""


@pytest.mark.root
def test_ec2_instance_id_and_requests_from_imds(tmp_path: Path, stub_root_lower: Path) -> None:
    """On EC2 (forced here), boot asks IMDSv2 for the instance id, the tag and the user-data line."""
    root = make_root(tmp_path, stub_root_lower)
    root.put("/usr/local/bin/curl", STUB_CURL, 0o755)
    text = """
ENABLE base
SERVICE base
    INIT echo init base >> /root/order
    UPDATE echo "update base $AMIC_INSTANCE_ID" >> /root/order
SERVICE extra
    REQUIRES base
    INIT echo init extra >> /root/order
SERVICE solo
    INIT echo init solo >> /root/order
SERVICE never
    INIT echo init never >> /root/order
"""
    root.install_stage2(compile_stage2(tmp_path / "ctx", text), "dash")
    rc, out = root.run(f"dash {RUNNER} boot", env={"AMIC_EC2": "1"}, check=None)
    assert rc == 0, out
    assert root.read("/root/order").splitlines() == [
        "init base", "init extra", "init solo", "update base i-0abc123"]
    calls = root.read("/var/log/stub-curl.log")
    assert "X-aws-ec2-metadata-token-ttl-seconds: 300" in calls and "X-aws-ec2-metadata-token: tok" in calls
    st = root.status("dash")
    assert st["instance_id"] == "i-0abc123"
    assert {s["name"] for s in st["services"] if s["enabled"]} == {"base", "extra", "solo"}


@pytest.mark.root
@pytest.mark.parametrize("shell_id", list(SHELLS))
def test_build_keys_marked_removed_and_added_back(tmp_path: Path, stub_root_lower: Path,
                                                  shell_id: str) -> None:
    """Every key a builder authorises is marked; prepare-image and a checkpoint remove all
    marked keys (an earlier build's too), and the builder can authorise its own again."""
    root = make_root(tmp_path, stub_root_lower)
    amic, env = runner(shell_id)
    root.install_stage2(compile_stage2(tmp_path / "ctx", "SERVICE app\n    INIT true\n"),
                        SHELLS[shell_id], env=env)
    user_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIUserKeyBlob user@laptop"
    old_build = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOldBuildBlob amic-build-key"
    new_build = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINewBuildBlob amic-0f3c"   # as cloud-init wrote it
    root.run("useradd -m -s /bin/sh admin")
    root.put("/home/admin/.ssh/authorized_keys", f"{user_key}\n{old_build}\n{new_build}\n", 0o600)
    root.put("/root/.ssh/authorized_keys", f"no-pty {new_build}\n", 0o600)

    rc, out = root.run(f"{amic} build-key mark AAAAC3NzaC1lZDI1NTE5AAAAINewBuildBlob", env=env,
                       check=None)
    assert rc == 0, out
    marked = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINewBuildBlob amic-build-key"
    assert root.read("/home/admin/.ssh/authorized_keys").splitlines() == [user_key, old_build, marked]
    assert root.read("/root/.ssh/authorized_keys") == f"no-pty {marked}\n"

    rc, out = root.run(f"{amic} build-key remove", env=env, check=None)
    assert rc == 0, out
    assert root.read("/home/admin/.ssh/authorized_keys") == user_key + "\n"
    assert root.read("/root/.ssh/authorized_keys") == ""
    assert root.file("/home/admin/.ssh/authorized_keys").stat().st_mode & 0o777 == 0o600

    rc, out = root.run(f"{amic} build-key add admin 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINewBuildBlob'"
                       f" && {amic} build-key add admin 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINewBuildBlob'",
                       env=env, check=None)
    assert rc == 0, out
    assert root.read("/home/admin/.ssh/authorized_keys").splitlines() == [user_key, marked]
    rc, out = root.run("stat -c %U /home/admin/.ssh/authorized_keys")
    assert out.strip() == "admin"

    rc, out = root.run(f"{amic} prepare-image", env=env, check=None)
    assert rc == 0, out
    assert root.read("/home/admin/.ssh/authorized_keys") == user_key + "\n"

    rc, out = root.run(f"{amic} build-key add nosuchuser 'ssh-ed25519 AAAA'", env=env, check=None)
    assert rc == 1 and "no user 'nosuchuser'" in out
    rc, out = root.run(f"{amic} build-key frobnicate", env=env, check=None)
    assert rc == 2


STUB_APT_ARGS = """#!/bin/sh
# one argument a line, so a split or globbed name shows
{ echo "== call"; for a; do printf '[%s]\\n' "$a"; done; } >> /var/log/stub-apt-args.log
exit 0
"""


@pytest.mark.root
@pytest.mark.parametrize("shell_id", ["dash", "busybox-userland", "bash-posix"])
def test_package_names_reach_the_manager_quoted(shell_id: str, tmp_path: Path,
                                                stub_root_lower: Path) -> None:
    """Each name is one argument: never split, never globbed; known prefixes only are stripped.

    The compiler refuses globs and spaces, so the glob and space lines are written into
    the unpacked stage2 by hand (what an edited or foreign stage2 could hold)."""
    root = make_root(tmp_path, stub_root_lower)
    root.put("/usr/local/sbin/apt-get", STUB_APT_ARGS, 0o755)
    amic, env = runner(shell_id)
    text = "SERVICE pk\n    PACKAGES libc6:i386 apt:zlib1g:amd64 rpm:jq-rpm foo=1.2-3\n"
    root.install_stage2(compile_stage2(tmp_path / "ctx", text), SHELLS[shell_id], env=env)
    listing = "/var/lib/amic/stage2/services/pk/packages"
    assert root.read(listing).split() == ["apt:zlib1g:amd64", "foo=1.2-3", "libc6:i386",
                                          "rpm:jq-rpm"]
    root.put(listing, root.read(listing) + "lib*\ntwo words\n")
    # `lib*` run from / would glob to lib, lib64, ... in an unquoted expansion
    rc, out = root.run(f"cd / && {amic} init", env=env, check=None)
    assert rc == 0, out
    calls = root.read("/var/log/stub-apt-args.log").split("== call\n")
    install = next(c for c in calls if "[install]\n" in c)
    names = install.split("[--no-install-recommends]\n", 1)[1].splitlines()
    assert names == ["[zlib1g:amd64]", "[foo=1.2-3]", "[libc6:i386]", "[lib*]", "[two words]"]

    # a name that would be an option never reaches the manager: the init fails at PACKAGES
    root.run("rm -f /var/log/stub-apt-args.log /var/lib/amic/init/pk")
    root.put(listing, "-s\nhello\n")
    rc, out = root.run(f"{amic} init", env=env, check=None)
    assert rc != 0, out
    assert "refusing package name '-s'" in out
    assert "pk: init: FAILED" in out and "Amifile:2" in out, out
    assert not root.exists("/var/log/stub-apt-args.log") or \
        "[install]" not in root.read("/var/log/stub-apt-args.log")


@pytest.mark.root
@pytest.mark.parametrize("shell_id", ["dash", "busybox-userland"])
@pytest.mark.parametrize("name", ["ca-certificates-", "hello_"])
def test_an_apt_action_suffix_never_reaches_the_manager(shell_id: str, name: str,
                                                        tmp_path: Path,
                                                        stub_root_lower: Path) -> None:
    """`apt-get install NAME-` removes NAME, `NAME_` purges it (issue 18): the compiler refuses
    such a word; a stage2 edited by hand is refused by the runner before apt-get runs."""
    root = make_root(tmp_path, stub_root_lower)
    root.put("/usr/local/sbin/apt-get", STUB_APT_ARGS, 0o755)
    amic, env = runner(shell_id)
    text = "SERVICE pk\n    PACKAGES hello\n"
    root.install_stage2(compile_stage2(tmp_path / "ctx", text), SHELLS[shell_id], env=env)
    root.put("/var/lib/amic/stage2/services/pk/packages", f"hello\n{name}\n")
    rc, out = root.run(f"{amic} init", env=env, check=None)
    assert rc != 0, out
    assert f"refusing package name '{name}': apt-get would remove or purge" in out
    assert "pk: init: FAILED" in out, out
    assert not root.exists("/var/log/stub-apt-args.log") or \
        "[install]" not in root.read("/var/log/stub-apt-args.log")


FAILING_AT_7 = """\
SERVICE app
    INIT echo first > /root/first
    INIT <<~EOF
        echo one
        echo two
        cat <<END >/root/inner
        inner heredoc
        END
        echo six
        test -e /nonexistent/amic-line-7
        echo eight > /root/eight
        echo nine
        echo ten
    EOF
"""


@pytest.mark.root
@pytest.mark.parametrize("shell_id", list(SHELLS))
def test_failing_command_line_is_reported(shell_id: str, tmp_path: Path, stub_root_lower: Path) -> None:
    """A 10-line INIT (with a heredoc) failing on its line 7 names that line of the Amifile,
    in the marker, the failure record and status; the heredoc's content is exact."""
    root = make_root(tmp_path, stub_root_lower)
    amic, env = runner(shell_id)
    root.install_stage2(compile_stage2(tmp_path / "ctx", FAILING_AT_7), SHELLS[shell_id], env=env)
    rc, out = root.run(f"{amic} init", env=env, check=None)
    line = amifile_line(FAILING_AT_7, "test -e /nonexistent/amic-line-7")
    assert line == 3 + 7
    assert rc == 1 and f"app: init: FAILED exit 1 at Amifile:{line}" in markers(out), out
    assert root.read("/root/inner") == "inner heredoc\n" and not root.exists("/root/eight")
    assert root.read("/var/lib/amic/init/app.failed").count(f"FAILED_WHERE='Amifile:{line}'") == 1
    assert not root.exists("/var/lib/amic/instance/script-line")
    # the markers leave the script's output alone, and `compile --print` shows the text as written
    assert "__amic_at" not in out


WORDS = """\
SECRET WORD
SERVICE web
    INIT <<~EOF
        env > /root/init-env
        echo "init says $WORD"
        printf 'no newline'
        exit 4
    EOF
    UPDATE echo "update says ${WORD:-nothing}"
"""


@pytest.mark.parametrize("shell_id", list(SHELLS))
def test_markers_carry_the_nonce_and_only_payload_is_masked(shell_id: str, tmp_path: Path,
                                                            stub_root_lower: Path) -> None:
    """Issue 18 item 10, in the runner: with AMIC_MARK its own lines start amic[MARK]: and are
    never masked (a secret 'web: init' leaves them whole), scripts do not inherit the nonce,
    a marker after output without a newline is still whole; at boot (no nonce) lines start
    amic: as before."""
    root = make_root(tmp_path, stub_root_lower)
    amic, _ = runner(shell_id)
    mark = "0123456789abcdef" * 2
    env = {"AMIC_MARK": mark, "AMIC_SECRET_NAMES": "WORD", "WORD": "web: init",
           "AMIC_INSTALL_POLICY": "keep"}
    root.install_stage2(compile_stage2(tmp_path / "ctx", WORDS), SHELLS[shell_id], env=env)
    rc, out = root.run(f"{amic} init web", env=env, check=None)
    assert rc == 1, out
    lines = out.splitlines()
    assert f"amic[{mark}]: web: init: begin" in lines, out
    assert "init says ***" in lines
    assert f"no newlineamic[{mark}]: web: init: INIT script 01 failed (exit 4); the service is " \
           "not marked initialised" in lines, out
    assert f"amic[{mark}]: web: init: FAILED exit 4 at Amifile:7" in lines
    assert "amic: " not in out and "web: init" not in out.replace(f"amic[{mark}]: web: init", "")
    seen = root.read("/root/init-env")
    assert "AMIC_MARK" not in seen and mark not in seen and "WORD=web: init" in seen
    assert "AMIC_INSTALL_POLICY" not in seen            # the builder's, not the script's
    log = root.read("/var/log/amic/amic.log")
    assert f"amic[{mark}]: web: init: FAILED exit 4 at Amifile:7" in log and "init says ***" in log

    # the boot path: no nonce, no secrets; markers as they always were
    root.run(f"sed -i 's/exit 4/true/' {RUNNER.rsplit('/', 1)[0]}/services/web/init/01.sh")
    rc, out = root.run(f"{amic} boot", check=None)
    assert rc == 0, out
    assert norm(markers(out)) == ["web: init: begin", "web: update: begin",
                                  "web: update: ok Ns"], out
    assert re.search(r"^no newlineamic: web: init: ok \d+s$", out, re.M), out
    assert "update says nothing" in out.splitlines() and "[" not in "".join(markers(out))
    # a nonce that is not one is ignored (and never printed)
    rc, out = root.run(f"{amic} update", env={"AMIC_MARK": "zz; rm -rf /"}, check=None)
    assert rc == 0 and "web: update: ok" in "".join(markers(out)) and "zz" not in out


OTHER = """\
SERVICE other
    INIT true
    UPDATE echo other
"""


def test_install_keeps_the_updates_of_initialised_services(tmp_path: Path,
                                                           stub_root_lower: Path) -> None:
    """Issue 18 item 12, in the runner: with AMIC_INSTALL_POLICY=keep, install refuses a
    stage2 lacking services the installed one initialised; replace warns and replaces."""
    root = make_root(tmp_path, stub_root_lower)
    amic, env = runner("dash")
    root.install_stage2(compile_stage2(tmp_path / "a", AMIFILE, FILES), "dash", env=env)
    root.run(f"{amic} init web", env=env)           # base and web get init records
    first = root.read("/var/lib/amic/stage2/manifest")
    other = compile_stage2(tmp_path / "b", OTHER)
    root.put("/tmp/other.tar", other)
    install = "cd /tmp && rm -rf stage2 && tar -xf other.tar && dash stage2/amic install"
    rc, out = root.run(install, env={"AMIC_INSTALL_POLICY": "keep"}, check=None)
    assert rc == 1, out
    assert "it has initialised services that this stage2 (Amifile) lacks: base web." in out
    assert root.read("/var/lib/amic/stage2/manifest") == first
    rc, out = root.run(install, env={"AMIC_INSTALL_POLICY": "bogus"}, check=None)
    assert rc == 2 and root.read("/var/lib/amic/stage2/manifest") == first
    # the same stage2 again, or one with every initialised service, installs quietly
    rc, out = root.run("cd /tmp && rm -rf stage2 && tar -xf stage2.tar && dash stage2/amic install",
                       env={"AMIC_INSTALL_POLICY": "keep"}, check=None)
    assert rc == 0 and "warning" not in out, out
    rc, out = root.run(install, env={"AMIC_INSTALL_POLICY": "replace"}, check=None)
    assert rc == 0, out
    assert "warning: replacing the stage2" in out and "no longer runs at boot: base web" in out
    assert "AMIC_SERVICES='other'" in root.read("/var/lib/amic/stage2/manifest")
