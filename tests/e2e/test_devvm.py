"""The same Amifile gives a VM: disks booted for real under QEMU, an OCI image in podman and Docker.

One image is built on the local target for the whole module, in a store of
this run's own (a crashed run leaves nothing the next one trips on; only the
debootstrap base and the package download cache are shared), then:

- ``export --format qcow2 --authorized-key`` and boot it under QEMU with BIOS
  (SeaBIOS): the boot hook's success line on the serial console, log in over
  the forwarded port with the export's key, ``amic status``, the root grown
  to a bigger disk; a second boot with ``--service test`` requested (SMBIOS
  credential) initialises ``test``; clean ACPI shutdowns;
- the same export compressed (``--compress``), booted with UEFI (OVMF);
- ``amic run --vm --service test`` end to end through the CLI;
- ``export --format oci``: ``podman load``, then ``amic status`` in it
  (``podman run``); the same archive ``docker load``-ed and run in a dockerd of
  the test's own (``tests/harness/dockerd.py``: no bridge, no iptables, its
  mounts in a private namespace).

The network is QEMU user networking with ``restrict=on``: the guest reaches
nothing but the forwarded SSH port. KVM when it can run a stock kernel here,
TCG otherwise (``amic.targets.local.vm.kvm_usable``).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from amic.targets.local import vm

from tests.harness import dockerd
from tests.harness.cli import AMIC, run_amic

pytestmark = [pytest.mark.slow, pytest.mark.root]

REPO = Path(__file__).resolve().parents[2]
# This run's own store, on the cache's filesystem (images share blocks with the base), removed
# when the module ends; one a killed run left is removed by the next (its pid is gone).
RUNS = Path("/var/cache/amic/e2e-devvm-runs")
STORE = RUNS / str(os.getpid())
BOOT_TIMEOUT = 900
AMIFILE = """\
FROM debian:12
ENABLE base
SERVICE base
    PACKAGES jq
    INIT echo base > /etc/devvm-base
    UPDATE date > /run/devvm-booted
SERVICE test
    REQUIRES base
    INIT echo test > /etc/devvm-test
    UPDATE echo updated > /run/devvm-test-updated
"""


def amic(*args: str, cwd: Path, check: bool = True,
         path_first: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "AMIC_CACHE_DIR": str(STORE)}
    if path_first is not None:      # a directory of stand-in tools found before the real ones
        env["PATH"] = f"{path_first}:{env['PATH']}"
    env.pop("AMIC_TARGET", None)
    proc = run_amic(*args, cwd=cwd, env=env, timeout=None)
    if check and proc.returncode != 0:
        raise AssertionError(f"amic {' '.join(args)}: exit {proc.returncode}\n{proc.stderr[-4000:]}")
    return proc


def figure(name: str, value) -> None:
    """Figures for the issue's note (shown with -s; also appended to $AMIC_FIGURES)."""
    line = f"FIGURE {name}: {value}"
    print(line)
    if os.environ.get("AMIC_FIGURES"):
        with open(os.environ["AMIC_FIGURES"], "a") as fh:
            fh.write(line + "\n")


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Path]:
    from amic.targets.local import rootfs

    base = rootfs.ensure_base("debian:12")
    for left in RUNS.glob("*"):
        if left.name.isdigit() and not Path("/proc", left.name).exists():
            shutil.rmtree(left, ignore_errors=True)
    STORE.mkdir(parents=True)
    (STORE / "bases").symlink_to(base.parent)
    shared_packages = rootfs.cache_dir() / "local" / "packages"
    shared_packages.mkdir(parents=True, exist_ok=True)
    (STORE / "local").mkdir()
    (STORE / "local" / "packages").symlink_to(shared_packages)
    proj = tmp_path_factory.mktemp("devvm") / "devvm"
    proj.mkdir()
    (proj / "Amifile").write_text(AMIFILE)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(proj / "dev_key")],
                   check=True)
    amic("build", "--target", "local", "-q", cwd=proj)
    yield proj
    shutil.rmtree(STORE, ignore_errors=True)


@pytest.fixture(scope="module")
def qcow2(project: Path) -> Path:
    out = project / "devvm.qcow2"
    t0 = time.monotonic()
    amic("export", "latest", "--format", "qcow2", "--authorized-key", str(project / "dev_key.pub"),
         "-o", str(out), cwd=project)
    figure("export qcow2 seconds (VM layer cached after the first run)", f"{time.monotonic() - t0:.1f}")
    figure("export qcow2 bytes (file)", out.stat().st_size)
    info = subprocess.run(["qemu-img", "info", str(out)], text=True, capture_output=True).stdout
    figure("export qcow2 virtual size", next(ln for ln in info.splitlines() if "virtual size" in ln))
    return out


@pytest.fixture(scope="module")
def qcow2_compressed(project: Path, qcow2: Path) -> Path:
    out = project / "devvm-small.qcow2"
    amic("export", "latest", "--format", "qcow2", "--compress", "--authorized-key",
         str(project / "dev_key.pub"), "-o", str(out), cwd=project)
    figure("export qcow2 --compress bytes (file)", out.stat().st_size)
    assert out.stat().st_size < qcow2.stat().st_size * 0.7, (out.stat().st_size,
                                                            qcow2.stat().st_size)
    check = subprocess.run(["qemu-img", "check", str(out)], text=True, capture_output=True)
    assert check.returncode == 0 and "compressed clusters" in check.stdout, check.stdout
    return out


def overlay(base: Path, path: Path, size: str | None = None) -> Path:
    argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(base), str(path)]
    subprocess.run(argv + ([size] if size else []), check=True)
    return path


def boot(disk: Path, workdir: Path, label: str, **kw) -> vm.QemuVm:
    machine = vm.QemuVm(disk, workdir, **kw)
    assert any("restrict=on" in a for a in machine.argv())   # no packet leaves this machine
    machine.start()
    try:
        assert machine.wait_boot(BOOT_TIMEOUT) == "ok", "\n".join(machine.console[-40:])
    except BaseException:
        machine.kill()
        raise
    figure(f"{label}: power-on to boot hook done ({'KVM' if machine.kvm else 'TCG'})",
           f"{machine.boot_seconds:.1f}s")
    return machine


def shut_down(machine: vm.QemuVm) -> None:
    rc = machine.stop(timeout=180)
    assert rc == 0, f"QEMU exit {rc}:\n" + "\n".join(machine.console[-20:])


def test_qcow2_boots_with_bios_login_status_then_service_on_second_boot(
        project: Path, qcow2: Path, tmp_path: Path) -> None:
    key = project / "dev_key"
    disk = overlay(qcow2, tmp_path / "bios.qcow2", "4G")    # a bigger disk: the root grows
    machine = boot(disk, tmp_path, "BIOS first boot")
    try:
        rc, out = vm.ssh_run(machine.ssh_port, key, "/var/lib/amic/stage2/amic status")
        assert rc == 0, out
        rows = {ln.split()[0]: ln for ln in out.splitlines()[2:] if ln.strip()}
        assert rows["base"].split()[1] == "yes" and rows["test"].split()[1] == "no", out
        rc, out = vm.ssh_run(machine.ssh_port, key,
                             "cat /etc/devvm-base /run/devvm-booted >/dev/null && "
                             "df -B1M --output=size / | tail -n 1 && ls /etc/ssh/ssh_host_ed25519_key")
        assert rc == 0, out
        assert int(out.split()[0]) > 3000, f"root not grown to the 4G disk: {out}"
    finally:
        shut_down(machine)

    machine = boot(disk, tmp_path, "BIOS second boot with --service test", services=["test"])
    try:
        rc, out = vm.ssh_run(machine.ssh_port, key,
                             "cat /etc/devvm-test /run/devvm-test-updated && "
                             "/var/lib/amic/stage2/amic status")
        assert rc == 0, out
        assert out.startswith("test\nupdated\n"), out
        rows = {ln.split()[0]: ln for ln in out.splitlines()[4:] if ln.strip()}
        assert rows["test"].split()[1] == "yes" and " ok " in rows["test"], out
    finally:
        shut_down(machine)


def test_compressed_qcow2_boots_with_uefi(project: Path, qcow2_compressed: Path,
                                          tmp_path: Path) -> None:
    disk = overlay(qcow2_compressed, tmp_path / "uefi.qcow2")
    machine = boot(disk, tmp_path, "UEFI boot", uefi=True)
    try:
        assert any("BdsDxe" in ln or "UEFI" in ln for ln in machine.console), machine.console[:20]
        rc, out = vm.ssh_run(machine.ssh_port, project / "dev_key",
                             "test -d /sys/firmware/efi && /var/lib/amic/stage2/amic status")
        assert rc == 0, out
    finally:
        shut_down(machine)


def test_amic_run_vm_requests_a_service(project: Path) -> None:
    proc = amic("run", "--vm", "--service", "test", "--timeout", str(BOOT_TIMEOUT), "latest",
                cwd=project, check=False)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "ssh -i" in proc.stderr and "127.0.0.1" in proc.stderr
    # the status was read checking the host key amic gave the VM (a key the guest made
    # itself would have failed the read); the printed line pins it too
    assert "StrictHostKeyChecking=yes" in proc.stderr and "HostKeyAlias=amic-vm-" in proc.stderr
    rows = {ln.split()[0]: ln for ln in proc.stdout.splitlines()[2:] if ln.strip()}
    assert rows["test"].split()[1] == "yes" and " ok " in rows["test"], proc.stdout
    tmp = STORE / "local" / "tmp"      # a run that is not --keep works in the store's tmp/
    assert not (tmp.is_dir() and list(tmp.iterdir())), "the run's overlay was left"


def test_a_failed_qcow2_conversion_leaves_no_partial_file(project: Path, qcow2: Path,
                                                          tmp_path: Path) -> None:
    """qemu-img fails halfway (a stand-in that writes part of its output, as a full disk
    would): a clear error, and nothing left beside the output."""
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "qemu-img").write_text('#!/bin/sh\nfor last; do :; done\necho partial > "$last"\n'
                                    'echo "qemu-img: No space left on device" >&2\nexit 1\n')
    (tools / "qemu-img").chmod(0o755)
    out = tmp_path / "broken.qcow2"
    proc = amic("export", "latest", "--format", "qcow2", "--compress", "-o", str(out),
                cwd=project, check=False, path_first=tools)
    assert proc.returncode == 1, proc.stderr
    assert "qemu-img failed (exit 1): qemu-img: No space left on device" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tools"]


@pytest.mark.parametrize("fmt, magic", [("qcow2", b"QFI\xfb"), ("oci", b"oci-layout")])
def test_an_export_into_a_fifo_writes_it_in_place(project: Path, qcow2: Path, tmp_path: Path,
                                                  fmt: str, magic: bytes) -> None:
    """A FIFO (or a device) as the output is written into, never replaced by a file."""
    import stat
    import threading

    fifo = tmp_path / "out.pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    proc = amic("export", "latest", "--format", fmt, "-o", str(fifo), cwd=project, check=False)
    reader.join(timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced"
    assert got and len(got[0]) > 1 << 20 and got[0][:512].find(magic) >= 0, got[0][:64]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.pipe"]


def test_prune_during_a_disk_export_keeps_the_vm_layer_and_the_scratch(project: Path,
                                                                        qcow2: Path) -> None:
    """The VM layer is use-locked while the disk is written: ``prune --all`` keeps it and the
    export's scratch, and the export completes (issue 18)."""
    out = project / "during-prune.raw"
    env = {**os.environ, "AMIC_CACHE_DIR": str(STORE)}
    export = subprocess.Popen([AMIC, "export", "latest", "--format", "raw", "-o", str(out)],
                              cwd=project, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        tmp = STORE / "local" / "tmp"
        while not (tmp.is_dir() and list(tmp.glob("disk-*/upper"))):
            assert export.poll() is None and time.monotonic() < deadline, export.stderr.read()
            time.sleep(0.05)
        # --force: the project has no identity (no git, no NAME), so its images are only
        # candidates when forced; the layer under export must stay all the same
        proc = amic("prune", "--all", "--force", cwd=project)
        assert "kept layer" in proc.stderr and "kept temporary tmp/disk-" in proc.stderr, \
            proc.stderr
    finally:
        _, err = export.communicate(timeout=900)
    assert export.returncode == 0, err[-3000:]
    table = subprocess.run(["sgdisk", "-p", str(out)], text=True, capture_output=True).stdout
    assert "8304" in table, table
    out.unlink()
    amic("build", "--target", "local", "-q", cwd=project)   # what prune --all took, back


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_a_disk_export_never_writes_through_links_planted_beside_it(project: Path, qcow2: Path,
                                                                     tmp_path: Path,
                                                                     fmt: str) -> None:
    """Links owned by another user at every predictable name beside ``-o`` in a sticky shared
    directory (``.NAME.part`` was the staging name): the victims are untouched, the disk is
    complete. ``mke2fs`` and ``qemu-img`` write only inside amic's private directory."""
    from amic.fsutil import STAGING_MARK

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    out = f"dev.{fmt}"
    names = [f".{out}.part", f"{out}.part", f".{out}.tmp", f".{out}{STAGING_MARK}part",
             "output.part", "disk.raw", "part"]
    victims = {}
    for i, name in enumerate(names):
        victim = tmp_path / f"victim{i}"
        victim.write_text("precious\n")
        os.symlink(victim, shared / name)
        os.lchown(shared / name, 65534, 65534)
        victims[name] = victim
    amic("export", "latest", "--format", fmt, "-o", str(shared / out), cwd=project)
    for name, victim in victims.items():
        assert victim.read_text() == "precious\n", f"written through {name}"
    assert sorted(p.name for p in shared.iterdir()) == sorted([*names, out])
    info = subprocess.run(["qemu-img", "info", str(shared / out)], text=True,
                          capture_output=True).stdout
    assert f"file format: {fmt}" in info, info


def test_raw_export_is_sparse(project: Path) -> None:
    out = project / "devvm.raw"
    amic("export", "latest", "--format", "raw", "-o", str(out), cwd=project)
    st = out.stat()
    figure("export raw bytes apparent / allocated", f"{st.st_size} / {st.st_blocks * 512}")
    assert st.st_blocks * 512 < st.st_size * 0.9
    table = subprocess.run(["sgdisk", "-p", str(out)], text=True, capture_output=True).stdout
    assert "EF02" in table and "EF00" in table and "8304" in table, table


def podman_options() -> tuple[list[str], list[str]]:
    """What ``podman`` and ``podman run`` need on this host, decided by what the host is.

    - ulimits of 1024 (or the host's hard limit, if lower): podman asks for its defaults
      (nofile 1048576, nproc at the host's maximum) and, without CAP_SYS_RESOURCE (a
      container sandbox), runc's setrlimit above what the container's parent holds
      fails; 1024 is far below any real host's limits and plenty for ``amic status``;
    - runc where cgroups are v1 or hybrid (no cgroup2 at /sys/fs/cgroup) and runc is
      installed: crun refuses hybrid hierarchies; on cgroup v2 podman's default runtime
      (crun or runc) is used as it is.
    """
    run_options = []
    for name, limit in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        hard = resource.getrlimit(limit)[1]
        value = 1024 if hard == resource.RLIM_INFINITY else min(hard, 1024)
        run_options += ["--ulimit", f"{name}={value}:{value}"]
    cgroup_v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    runc = shutil.which("runc")
    global_options = ["--runtime", runc] if runc and not cgroup_v2 else []
    return global_options, run_options


def test_oci_export_loads_in_podman_and_runs_amic_status(project: Path) -> None:
    out = project / "devvm.oci.tar"
    amic("export", "latest", "--format", "oci", "-o", str(out), cwd=project)
    figure("export oci bytes", out.stat().st_size)
    load = subprocess.run(["podman", "load", "-i", str(out)], text=True, capture_output=True)
    assert load.returncode == 0, load.stderr
    ref = load.stdout.strip().splitlines()[-1].split("Loaded image: ")[-1].strip()
    assert ref.startswith("localhost/devvm:"), load.stdout
    try:
        inspect = subprocess.run(["podman", "image", "inspect", ref, "--format",
                                  "{{index .Labels \"amic:kind\"}} {{index .Annotations "
                                  "\"io.amic.image.id\"}}"], text=True, capture_output=True)
        assert inspect.stdout.split()[0] == "final", inspect.stdout + inspect.stderr
        status = [ref, "/var/lib/amic/stage2/amic", "status"]
        global_options, run_options = podman_options()
        run = subprocess.run(["podman", *global_options, "run", "--rm", "--network=none",
                              *run_options, *status], text=True, capture_output=True)
        figure("podman options chosen for this host",
               " ".join(global_options + run_options) or "none")
        assert run.returncode == 0, run.stdout + run.stderr
        assert "base" in run.stdout and "amic 0." in run.stdout, run.stdout
    finally:
        subprocess.run(["podman", "rmi", "-f", ref], capture_output=True)


def test_oci_export_loads_in_docker_and_runs_amic_status(project: Path) -> None:
    """The same archive in Docker (Debian's docker.io, 20.10: it reads the archive's
    Docker manifest.json), in a dockerd of the test's own (tests/harness/dockerd.py)."""
    out = project / "devvm.oci.tar"
    if not out.exists():
        amic("export", "latest", "--format", "oci", "-o", str(out), cwd=project)
    assert dockerd.available(), "docker.io is not installed (tools/setup installs it)"
    with dockerd.private_dockerd() as env:
        load = subprocess.run(["docker", "load", "-i", str(out)], env=env, text=True,
                              capture_output=True)
        assert load.returncode == 0, load.stderr
        ref = load.stdout.strip().splitlines()[-1].split("Loaded image: ")[-1].strip()
        assert ref.startswith("localhost/devvm:"), load.stdout
        kind = subprocess.run(["docker", "image", "inspect", ref, "--format",
                               "{{index .Config.Labels \"amic:kind\"}}"], env=env, text=True,
                              capture_output=True)
        assert kind.stdout.strip() == "final", kind.stdout + kind.stderr
        run = subprocess.run(["docker", "run", "--rm", "--network", "none", ref,
                              "/var/lib/amic/stage2/amic", "status"], env=env, text=True,
                             capture_output=True)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "base" in run.stdout and "amic 0." in run.stdout, run.stdout
        version = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                                 env=env, text=True, capture_output=True).stdout.strip()
        figure("docker load + run", f"docker {version}")
