"""``amic run --vm``: an image booted once on a throwaway overlay, its ``amic status`` read.

The VM's host key is made by amic (``vmhostkey``, as for ``amic up``) and checked by the
status read and by the ``ssh`` line printed for ``--keep``; an exported disk given with
``--disk`` may come from any amic and is reached unchecked, as before.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from amic.targets.local import vmhostkey
from amic.targets.local.vm import (QemuVm, VmBootError, cached_disk, overlay_of,
                                   powering_off, ssh_run, vm_key)


def run_image(target, image, *, services: Sequence[str] = (), keep: bool = False,
              uefi: bool = False, restrict: bool = True, timeout: float = 900,
              on_output=None, log=print, disk: Path | None = None) -> tuple[int, str]:
    """``amic run --vm``: boot ``image`` on a throwaway qcow2 overlay; return (exit, status).

    Waits for the boot hook, runs ``amic status`` over SSH, then powers off, unless
    ``keep``: then QEMU keeps running detached and how to reach and stop it is logged.
    Ctrl-C (or any error) powers the VM off and removes the overlay. ``disk``: an exported
    qcow2 to boot instead of ``image`` (None then), under an overlay that leaves it as it
    was; its ``amic status`` is read when the disk authorises amic's key.
    """
    from amic.targets.local.vmdisks import self_contained

    key = vm_key(target.store)
    label = disk.name if disk is not None else image.id[:12]
    with contextlib.ExitStack() as stack:
        if keep:     # outlives amic on purpose: not in tmp/, where prune would take it
            runs = target.store.root / "vm" / "runs"
            runs.mkdir(parents=True, exist_ok=True)
            workdir = Path(tempfile.mkdtemp(prefix=f"{label[:12]}-", dir=runs))
        else:        # a kill -9 leaves it where prune finds it
            workdir = stack.enter_context(target.store.scratch("vm-run-"))
        direct = None       # a disk given, or UEFI asked for: the disk's own boot loader
        if disk is not None:
            base = self_contained(disk)
        elif uefi:
            base = cached_disk(target, image, log=log)
        else:
            base, direct = cached_disk(target, image, log=log, kernel_into=workdir)
        return boot_vm(base, key, workdir, label, services=services, keep=keep, uefi=uefi,
                       restrict=restrict, timeout=timeout, on_output=on_output, log=log,
                       direct=direct, own_host_key=disk is None)


def boot_vm(base: Path, key: Path, workdir: Path, label: str, *, services: Sequence[str],
            keep: bool, uefi: bool, restrict: bool, timeout: float, on_output,
            log, direct=None, own_host_key: bool = False) -> tuple[int, str]:
    """The body of :func:`run_image`: the overlay of ``base`` in ``workdir``, booted.
    ``own_host_key``: amic makes the VM's host key (an image of this amic's VM layer takes
    it) and checks it; else (an exported disk of any age) the key is not checked."""
    overlay = workdir / "disk.qcow2"
    overlay_of(base, overlay)
    secrets = vmhostkey.make(workdir, label) if own_host_key else []
    vm = QemuVm(overlay, workdir, uefi=uefi, services=services, restrict=restrict,
                direct=direct, credential_files=secrets)
    ssh_line = shlex.join(["ssh", "-i", str(key), *vmhostkey.ssh_options(workdir, label),
                           "-p", str(vm.ssh_port), "root@127.0.0.1"])
    kept = stopped = False
    try:
        how = "UEFI" if uefi else "BIOS" if direct is None else "kernel loaded by QEMU"
        log(f"booting {label} under QEMU ({'KVM' if vm.kvm else 'TCG emulation'}, {how}); "
            f"{ssh_line}")
        vm.start(on_output, detach=keep)
        try:
            result = vm.wait_boot(timeout)
        except VmBootError:
            vm.kill()           # it never got to the boot hook: no ACPI handler to wait for
            stopped = True
            raise
        except KeyboardInterrupt:
            stopped = True
            powering_off(vm, log)
            raise
        log(f"boot hook {result} after {vm.boot_seconds:.1f}s")
        if direct is not None:
            direct.remove()
        try:
            rc, status = ssh_run(vm.ssh_port, key, "/var/lib/amic/stage2/amic status",
                                 host_key=vmhostkey.pinned(workdir))
        except Exception as exc:    # paramiko's errors: a disk that does not authorise our key
            rc, status = 1, f"amic status not read: could not log in over SSH ({exc})\n"
        if keep:
            kept = True
            log(f"left running (pid {vm.proc.pid}): {ssh_line}; stop it with "
                f"`kill {vm.proc.pid}` and remove {workdir} (a VM to live in, stopped "
                f"cleanly: `amic up`, `amic stop`)")
        return (0 if rc == 0 and result == "ok" else 1), status
    except KeyboardInterrupt:
        if not stopped:
            stopped = True
            powering_off(vm, log)
        raise
    finally:
        vmhostkey.forget(workdir)      # QEMU read them as it started
        if not kept:
            if not stopped:
                vm.stop()
            shutil.rmtree(workdir, ignore_errors=True)
