"""The dev VM commands' option table (``amic up``, ``amic stop``), as data.

These rows are the only list of those flags: ``amic.cli.devvm`` adds them through
``amic.cli.options`` and reads the defaults from here (:func:`value`), and the table in
docs/devvm.md is generated from them (``tools/option-table``). Import-light: every
``amic`` start reads this module.
"""

from __future__ import annotations

import argparse
import math

from amic.targets import Option

_VM = "the VM"
_BOOT = "boot"


def whole(text: str, most: int = 1 << 20) -> int:
    """A whole number above zero, at most ``most`` (``--cpus``, ``--memory``)."""
    try:
        number = int(text) if text.strip().isascii() else 0
    except ValueError:
        number = 0
    if number <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number above 0")
    if number > most:
        raise argparse.ArgumentTypeError(f"{text!r}: at most {most}")
    return number


def mebibytes(text: str) -> int:
    """``--memory``: MiB, up to 1 TiB (QEMU would refuse more only once the disk is made)."""
    return whole(text, 1 << 20)


def vcpus(text: str) -> int:
    """``--cpus``: up to 255, the most QEMU's pc machine takes."""
    return whole(text, 255)


def seconds(text: str) -> float:
    """A finite number of seconds above zero."""
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of seconds above 0")
    return number


UP_OPTIONS: tuple[Option, ...] = (
    Option(["--name"], "vm_name", _VM, "the VM's name, which ssh, stop, rm and logs take",
           metavar="NAME", unset="the project's name"),
    Option(["--memory", "-m"], "memory", _VM, "guest memory in MiB", metavar="MIB",
           type=mebibytes, default=1024),
    Option(["--cpus"], "cpus", _VM, "virtual CPUs", metavar="N", type=vcpus,
           unset="2"),
    Option(["-p", "--publish"], "publish", _VM,
           "forward 127.0.0.1:HOST to the guest's TCP port GUEST (repeatable; loopback only)",
           metavar="HOST:GUEST", action="append"),
    Option(["--mount"], "mount", _VM,
           "share the host directory DIR read-write at GUEST in the VM (virtiofs; repeatable)",
           metavar="DIR[:GUEST]", action="append", unset="GUEST: /mnt/<DIR's name>"),
    Option(["--service", "-s"], "service", _BOOT,
           "request a service at boot (initialised if the image lacks it; repeatable)",
           metavar="SVC", action="append"),
    Option(["--timeout"], "timeout", _BOOT,
           "give up when the boot hook has not reported after this long (the VM is killed)",
           metavar="SECONDS", type=seconds, default=900),
)

STOP_OPTIONS: tuple[Option, ...] = (
    Option(["--timeout"], "timeout", "stop",
           "seconds to wait for the ACPI power-off before forcing the VM off",
           metavar="SECONDS", type=seconds, default=60),
)


def value(args, row: Option):
    """The row's value in parsed ``args``: given, else the row's default."""
    given = getattr(args, row.dest, None)
    return row.default if given is None else given


def option(rows, dest: str) -> Option:
    return next(row for row in rows if row.dest == dest)
