"""Every target behind one small interface, for the contract suite (tests/targets/test_contract.py).

A :class:`Subject` is a target with the means to look at it from outside:
``make()`` gives a fresh target object (as each ``amic build`` would make
one; the constructor call lives here, once per target), ``read`` shows a
file as an image (or, in place, the host) has it, ``disk_holding`` searches
every disk any machine or image of the target wrote, ``assert_clean`` checks
that nothing a build started is still there. ``caps`` says what the target
promises, so a scenario asserts the right outcome instead of being skipped.

A new target gets the whole suite with one ``<name>_subject`` fixture here
and its name in ``SUBJECTS``. The fixtures are module-scoped: one store,
root, sshd or fake EC2 per target per test module.
"""

from __future__ import annotations

import abc
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from tests.harness.fake import FakeTarget

SLOW_ROOT = (pytest.mark.slow, pytest.mark.root)
SUBJECTS = (
    pytest.param("fake", id="fake"),
    pytest.param("local", id="local", marks=SLOW_ROOT),
    pytest.param("ssh", id="ssh", marks=SLOW_ROOT),
    pytest.param("ec2", id="ec2", marks=SLOW_ROOT),
)
"""The targets the contract suite runs against; each has a ``<name>_subject`` fixture."""


@attrs.frozen
class Caps:
    keeps_images: bool = True
    """Snapshots and a cache of layers. False: provisions one host in place (``ssh``): every
    build connects, the runtime on the host skips an init it already ran, the id is the host."""


class Subject(abc.ABC):
    name: str
    caps: Caps = Caps()
    workdir: Path
    """Where the scenario writes its Amifile."""

    @abc.abstractmethod
    def make(self):
        """A target object, as a build would get it."""

    @abc.abstractmethod
    def read(self, image_id: str, path: str) -> str | None:
        """The text of ``path`` in the image (in place: on the host), or None."""

    @abc.abstractmethod
    def disk_holding(self, value: bytes) -> list[str]:
        """Every file of every disk this target's machines and images wrote that contains ``value``."""

    @abc.abstractmethod
    def assert_clean(self) -> None:
        """Nothing a build started is left running or lying around."""

    def kill_stray_inits(self) -> list[str]:
        """Stop the INITs still running after a build ended; return their command lines
        (the contract: there are none, Ctrl-C stops the INIT on every target)."""
        return []


def grep(value: bytes, *dirs: Path | str) -> list[str]:
    """Files under ``dirs`` (symlinks not followed) whose bytes contain ``value``."""
    dirs = [str(d) for d in dirs if os.path.exists(d)]
    if not dirs:
        return []
    proc = subprocess.run(["grep", "-rlaF", "--", value.decode(), *dirs], capture_output=True,
                          text=True, check=False)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.stdout.split()


def no_process_mentions(needle: str) -> None:
    for proc_dir in Path("/proc").iterdir():
        if proc_dir.name.isdigit() and int(proc_dir.name) != os.getpid():
            try:
                cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            assert needle not in cmdline, f"stray process {proc_dir.name}: {cmdline}"


SHARED_BASES = Path("/var/cache/amic/bases")
"""The debootstrap bases every test run on this machine shares, so each is made at most once."""


def cache_sharing_bases(tmp_path_factory) -> Path:
    """A fresh ``AMIC_CACHE_DIR`` (build memo, local store) whose ``bases`` are the shared ones."""
    cache = tmp_path_factory.mktemp("amic-cache")
    if os.geteuid() == 0:
        SHARED_BASES.mkdir(parents=True, exist_ok=True)
        (cache / "bases").symlink_to(SHARED_BASES)
    return cache


def share_packages(cache: Path) -> Path:
    """``cache``'s ``local/packages`` linked to the machine's (the VM layer's kernel and
    friends, downloaded once for every test of the run); returns ``cache``."""
    from amic.targets.local import rootfs

    shared = rootfs.cache_dir() / "local" / "packages"
    shared.mkdir(parents=True, exist_ok=True)
    (cache / "local").mkdir(exist_ok=True)
    (cache / "local" / "packages").symlink_to(shared)
    return cache


@pytest.fixture(scope="module")
def local_store(tmp_path_factory) -> Path:
    """An ``AMIC_CACHE_DIR`` for the module's CLI runs (passed in their environment)."""
    return cache_sharing_bases(tmp_path_factory)


@pytest.fixture(scope="module")
def amic_cache(tmp_path_factory) -> Iterator[Path]:
    """``AMIC_CACHE_DIR`` for the module, set in this process's environment too."""
    cache = cache_sharing_bases(tmp_path_factory)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("AMIC_CACHE_DIR", str(cache))
        yield cache


# -- fake ----------------------------------------------------------------------------------

class FakeSubject(Subject):
    name = "fake"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.target = FakeTarget()

    def make(self):
        return self.target      # its images live in the object: the same one every build

    def read(self, image_id, path):
        data = self.target.disks.get(image_id, {}).get(path)
        return None if data is None else data.decode()

    def disk_holding(self, value):
        disks = [*self.target.disks.items(), *((f"machine {id(m)}", m.files)
                                               for m in self.target.machines)]
        return [f"{where}:{path}" for where, files in disks
                for path, data in files.items() if value in data]

    def assert_clean(self):
        assert self.target.machines == []


@pytest.fixture(scope="module")
def fake_subject(tmp_path_factory) -> Subject:
    return FakeSubject(tmp_path_factory.mktemp("fake"))


# -- local ---------------------------------------------------------------------------------

class LocalSubject(Subject):
    name = "local"

    def __init__(self, workdir: Path, store: Path) -> None:
        self.workdir = workdir
        self.store = store

    def make(self):
        from amic.targets.local.target import LocalTarget

        return LocalTarget(store=self.store)

    def read(self, image_id, path):
        import stat

        for layer in self.make().lowers(image_id):
            p = layer / path.lstrip("/")
            if p.is_symlink() or p.exists():
                st = p.lstat()
                return None if stat.S_ISCHR(st.st_mode) else p.read_text()
        return None

    def disk_holding(self, value):
        return grep(value, self.store)     # images, machines (the base is shared, outside)

    def assert_clean(self):
        machines = self.store / "machines"
        assert not machines.is_dir() or not any(machines.iterdir()), list(machines.iterdir())
        assert str(self.store) not in Path("/proc/mounts").read_text()
        no_process_mentions(str(self.store))


@pytest.fixture(scope="module")
def local_subject(tmp_path_factory, amic_cache) -> Subject:
    return LocalSubject(tmp_path_factory.mktemp("local"), amic_cache / "local")


# -- ssh -----------------------------------------------------------------------------------

class SshSubject(Subject):
    name = "ssh"
    caps = Caps(keeps_images=False)
    RUNTIME = ("/var/lib/amic/", "sleep 60")
    """What a build's processes on the host have on their command lines."""

    def __init__(self, workdir: Path, server, key_file: Path) -> None:
        self.workdir = workdir
        self.server = server
        self.key_file = key_file

    def make(self):
        from amic.targets.ssh.target import SshTarget

        return SshTarget(f"root@127.0.0.1:{self.server.port}", key_file=str(self.key_file),
                         known_hosts=str(self.workdir / "known_hosts"), accept_new=True,
                         connect_options={"allow_agent": False, "look_for_keys": False})

    def read(self, image_id, path):
        proc = self.server.run(f"cat {path}")
        return proc.stdout if proc.returncode == 0 else None

    def disk_holding(self, value):
        return grep(value, self.server.upper)

    def assert_clean(self):
        assert self.server.exec("ls -A /tmp") == ""
        assert self.kill_stray_inits() == []

    def kill_stray_inits(self):
        # every process of the root's PID namespace but the harness's holder; the patterns
        # come in the environment so this command's own line does not match them
        found = self.server.exec(
            'for p in /proc/[0-9]*; do c=$(tr "\\0" " " 2>/dev/null < $p/cmdline) || continue; '
            'case "$c" in *"$A"*|*"$B"*) echo "$c"; kill -9 "${p#/proc/}";; esac; done',
            env={"A": self.RUNTIME[0], "B": self.RUNTIME[1]})
        return found.splitlines()


@pytest.fixture(scope="module")
def ssh_subject(tmp_path_factory, sshd_base, ssh_client_key) -> Iterator[Subject]:
    from tests.harness.sshd import SshdRoot

    workdir = tmp_path_factory.mktemp("ssh")
    with SshdRoot([sshd_base], workdir / "host" / "upper", [ssh_client_key[0]]) as server:
        yield SshSubject(workdir, server, ssh_client_key[1])


# -- ec2 (moto + the instance stand-in) ------------------------------------------------------

class Ec2Subject(Subject):
    name = "ec2"

    def __init__(self, workdir: Path, fake) -> None:
        self.workdir = workdir
        self.fake = fake

    def make(self):
        from amic.targets.ec2.target import Ec2Options, Ec2Target

        # a target per command: the next command comes after the tag index caught up
        if self.fake.strict is not None:
            self.fake.strict.consistency.settle()
        return Ec2Target(options=Ec2Options(
            ssh_cidrs=("127.0.0.1/32",), ssh_user="root", ssh_host="127.0.0.1",
            ssh_port=self.fake.standin.relay_port, poll_interval=0.05, ssh_timeout=60,
            console_timeout=30))

    def read(self, image_id, path):
        from tests.harness.ec2 import image_file

        p = image_file(self.fake, image_id, path)
        return None if p is None else p.read_text()

    def disk_holding(self, value):
        return grep(value, *self.fake.standin.disks())

    def assert_clean(self):
        from tests.harness.ec2 import assert_clean

        assert_clean(self.fake)


@pytest.fixture(scope="module")
def ec2_subject(tmp_path_factory) -> Iterator[Subject]:
    from tests.harness.ec2 import standin_ec2

    with standin_ec2(tmp_path_factory) as fake, pytest.MonkeyPatch.context() as env:
        for k in [k for k in os.environ if k.startswith("AWS_")]:
            env.delenv(k)
        for k, v in fake.env.items():
            env.setenv(k, v)
        fake.register_debian12()
        yield Ec2Subject(tmp_path_factory.mktemp("ec2-project"), fake)


@contextlib.contextmanager
def counting_launches(target) -> Iterator[list[str]]:
    """Record the id of every image ``target.launch`` starts a machine from."""
    launched: list[str] = []
    real = target.launch

    def launch(image, **kw):
        launched.append(image.id)
        return real(image, **kw)

    target.launch = launch
    try:
        yield launched
    finally:
        del target.launch
