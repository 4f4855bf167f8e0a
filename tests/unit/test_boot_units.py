"""What the boot hook waits for: the shipped units, and what the VM layer adds on top of them.

The disk's boot was made faster (issue 22) by what runs beside the hook, never by what
the hook waits for: on EC2 it must still start once the network is online (instance
metadata, package mirrors) and after the SSH host keys exist. These read the unit
files as systemd does (``Key=`` lines, an empty value resetting a list) and the
drop-ins the VM layer writes, so any loosening of that ordering fails here.
"""

from __future__ import annotations

import re
from pathlib import Path

from amic.targets.local import disk
from amic.targets.scripts import script
from tests.harness.heredocs import heredocs

REPO = Path(__file__).resolve().parents[2]
BOOT = REPO / "runtime" / "boot"


def unit(text: str) -> dict[str, list[str]]:
    """``Section.Key`` -> values, as systemd merges them (an empty assignment resets)."""
    conf: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        values = conf.setdefault(f"{section}.{key.strip()}", [])
        if value.strip():
            values.extend(value.split()) if key.strip() in LISTS else values.append(value.strip())
        else:
            values.clear()
    return conf


LISTS = {"After", "Before", "Wants", "Requires", "WantedBy"}


def test_the_boot_hook_waits_for_network_online_and_the_host_keys() -> None:
    conf = unit((BOOT / "amic.service").read_text())
    assert "network-online.target" in conf["Unit.Wants"]
    assert {"network-online.target", "amic-ssh-keygen.service"} <= set(conf["Unit.After"])
    assert "Unit.DefaultDependencies" not in conf      # after sysinit and basic.target too
    assert conf["Service.Type"] == ["oneshot"] and conf["Service.TimeoutStartSec"] == ["0"]
    assert conf["Install.WantedBy"] == ["multi-user.target"]
    keygen = unit((BOOT / "amic-ssh-keygen.service").read_text())
    assert {"ssh.service", "sshd.service"} <= set(keygen["Unit.Before"])


def test_the_runtime_reads_instance_data_on_ec2_before_it_inits_anything() -> None:
    # do_boot: the instance id from IMDS (then DMI), then the EC2 requests (tag, user
    # data), and only then inits and updates; nothing skips that on EC2.
    runtime = (REPO / "runtime" / "amic").read_text()
    body = runtime.split("\ndo_boot() {\n", 1)[1].split("\n}\n", 1)[0]
    order = ["instance_id", "if is_ec2; then ec2_requests; else vm_requests; fi",
             "run_inits", "run_updates"]
    at = [body.index(step) for step in order]
    assert at == sorted(at), body
    ident = runtime.split("\ninstance_id() {\n", 1)[1].split("\n}\n", 1)[0]
    assert "if is_ec2; then\n        IID=$(imds meta-data/instance-id)" in ident


def test_the_vm_layer_loosens_nothing_the_boot_hook_waits_for() -> None:
    files = heredocs(disk.VM_SCRIPT)
    assert "/usr/lib/amic-vm/growroot" in files           # the parser sees its files
    for path, text in files.items():
        # no drop-in or replacement of the hook's unit, nothing about network-online
        assert not path.startswith("/etc/systemd/system/amic.service"), path
        assert "network-online" not in text and "wait-online" not in text, path
    for word in ("network-online", "wait-online", "amic.service.d", "DefaultDependencies"):
        assert word not in disk.VM_SCRIPT.replace("Before=amic.service", ""), word
    masked = re.findall(r"systemctl mask (.+)", disk.VM_SCRIPT)
    assert masked == ["e2scrub_reap.service"], masked   # LVM snapshot cleanup: no LVM here
    # the growroot unit still runs before the hook (INIT may need the space)
    grow = unit(files["/etc/systemd/system/amic-growroot.service"])
    assert "amic.service" in grow["Unit.Before"]


def test_the_vm_layers_host_key_drop_in_keeps_what_the_hook_relies_on() -> None:
    # The keygen unit still runs (same unit, same ordering before sshd and the hook); on
    # VMs it installs the key amic up made (tests/unit/test_vm_hostkey.py) or makes the
    # ed25519 and ECDSA keys (milliseconds) instead of ssh-keygen -A, whose 3072-bit RSA
    # key took 13 s of emulated CPU on the boot's critical path.
    files = heredocs(disk.VM_SCRIPT)
    drop = unit(files["/etc/systemd/system/amic-ssh-keygen.service.d/amic-vm.conf"])
    assert drop["Service.ExecStart"] == ["/bin/sh -eu /usr/lib/amic-vm/hostkey"]
    assert set(drop) == {"Service.ExecStart"}
    made = [line.strip() for line in files["/usr/lib/amic-vm/hostkey"].splitlines()
            if line.strip().startswith("ssh-keygen ")]
    assert made == ['ssh-keygen -q -t ed25519 -N "" -f "$k"',
                    'ssh-keygen -q -t ecdsa -N "" -f /etc/ssh/ssh_host_ecdsa_key']
    assert "k=/etc/ssh/ssh_host_ed25519_key\n" in files["/usr/lib/amic-vm/hostkey"]
    base = unit((BOOT / "amic-ssh-keygen.service").read_text())
    # the condition that skips it once keys exist names the key the drop-in makes first
    assert "!/etc/ssh/ssh_host_ed25519_key" in base["Unit.ConditionPathExists"]


def test_the_vm_boots_with_two_vcpus_and_an_emulated_cpu_with_rdrand_without_svm(
        tmp_path: Path) -> None:
    # Under TCG: RDRAND, so the guest kernel's CRNG is ready before its second vCPU starts
    # (without it two vCPUs hung now and then in getrandom as the kernel patched itself
    # when the jitter-seeded CRNG got ready: vm.TCG_CPU; tests/e2e/test_devvm_up.py checks
    # the guest's "crng init done" time); a CPU model without SVM/VMX, so the guest loads
    # no kvm module whose power-off step (a call on every vCPU) hung with two; AMD's vendor
    # string (no page-table isolation), no AVX or 5-level paging to emulate. Two vCPUs.
    from amic.targets.local import vm

    machine = vm.QemuVm(tmp_path / "disk.qcow2", tmp_path, kvm=False)
    argv = machine.argv()
    assert argv[argv.index("-smp") + 1] == "2" and machine.cpus == 2
    assert argv[argv.index("-accel") + 1] == "tcg,thread=multi"
    cpu = argv[argv.index("-cpu") + 1].split(",")
    assert cpu[0] == "qemu64" and "-svm" in cpu and "+sse4.2" in cpu and "+rdrand" in cpu, cpu
    kvm = vm.QemuVm(tmp_path / "disk.qcow2", tmp_path, kvm=True).argv()
    assert kvm[kvm.index("-cpu") + 1] == "host" and kvm[kvm.index("-smp") + 1] == "2"
    assert vm.QemuVm(tmp_path / "d.qcow2", tmp_path, kvm=False, cpus=1).argv()[
        argv.index("-smp") + 1] == "1"


def test_only_dev_vm_disks_get_the_dev_vm_profile() -> None:
    # The quiet serial-only kernel and the masked units (make-root.sh's devvm profile) are
    # for amic run --vm / amic up / a plain export; an EC2 disk (export --for ec2, the
    # local bake's disk and its in-place reuse) is written without them.
    import ast

    pkg = REPO / "compiler" / "amic" / "targets"
    callers: dict[str, list[bool]] = {}
    for path in pkg.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr",
                                                      getattr(node.func, "id", "")) == "write_disk":
                dev = [k for k in node.keywords if k.arg == "devvm"]
                callers.setdefault(str(path.relative_to(pkg)), []).append(
                    bool(dev) and isinstance(dev[0].value, ast.Constant) and dev[0].value.value)
    assert callers["local/export.py"] == [True] and callers["local/vm.py"] == [True], callers
    assert callers["local/ec2disk.py"] == [False], callers
    assert callers["ec2/disk_reuse.py"] == [False], callers
    # the bake's in-place reuse writes the EC2 disk's kernel command line
    assert " ro console=tty0 console=ttyS0,115200n8\n" in script("amic.targets.local",
                                                                  "reuse-root.sh")
    # and only a dev VM's fresh disk boots the layers' kernel directly (no GRUB, and no
    # initramfs from an NVMe drive): run --vm and up; the EC2 code never asks for it
    direct: dict[str, int] = {}
    for path in pkg.rglob("*.py"):
        text = path.read_text()
        n = text.count("kernel_into=") + text.count("kernelboot")
        if n:
            direct[str(path.relative_to(pkg))] = n
    assert set(direct) == {"local/vm.py", "local/vmrun.py", "local/devvm.py",
                           "local/kernelboot.py"}, direct
    # the EC2 disk's grub.cfg is not the dev VM's: it keeps duplicate address detection
    assert "dad_transmits" not in script("amic.targets.local", "reuse-root.sh")
