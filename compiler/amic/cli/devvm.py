"""``amic up``, ``ssh``, ``ps``, ``stop``, ``rm``, ``logs``: the dev VM commands (parse, print).

The work is :mod:`amic.targets.local.devvm` (imported in the handlers); the registry of
VMs is :mod:`amic.targets.local.machines`; the flags are the rows of
:mod:`amic.targets.local.flags`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

from amic.cli.images import REF_HELP, lookup
from amic.cli.options import add_option_groups
from amic.diagnostics import escape_controls
from amic.errors import UsageError
from amic.targets.local.flags import STOP_OPTIONS, UP_OPTIONS, option, value


def register(sub) -> None:
    p = sub.add_parser(
        "up", help="boot the project's image as a named dev VM in the background",
        description="Boot the project's image (default: latest) as a VM named after the "
        "project, under QEMU (KVM where usable, else emulation), in the background; return "
        "once the boot hook reported. A stopped VM boots again on its own disk. Ports and "
        "shared folders are loopback-only; the guest reaches nothing else (docs/devvm.md).")
    p.add_argument("image", nargs="?", default="latest", help=REF_HELP)
    p.add_argument("--file", "-f", metavar="AMIFILE",
                   help="the project's Amifile, which names the VM (default: ./Amifile)")
    add_option_groups(p, UP_OPTIONS, "up")
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("ssh", help="a shell (or COMMAND) as root in a dev VM",
                       description="amic ssh [NAME] [-- COMMAND...]: NAME defaults to this "
                       "project's VM, or the only one there is.")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    p.set_defaults(func=cmd_ssh)

    p = sub.add_parser("ps", help="list dev VMs (and machines amic run --keep left): project, "
                       "image, state, ports, uptime")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_ps)

    p = sub.add_parser("stop", help="power a dev VM off (ACPI; forced after --timeout)")
    p.add_argument("name", nargs="?", metavar="NAME")
    add_option_groups(p, STOP_OPTIONS, "stop")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser("rm", help="remove a stopped dev VM (its disk overlay and logs)")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("--force", action="store_true", help="stop it first if it runs")
    p.set_defaults(func=cmd_rm)

    p = sub.add_parser("logs", help="a dev VM's amic boot log and serial console")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("--follow", "-F", action="store_true",
                   help="keep printing the console while the VM runs")
    p.set_defaults(func=cmd_logs)


def _store():
    from amic.targets import get_target

    return get_target("local").store


def _project(amifile: str | None):
    """The project of ``amifile`` (./Amifile by default; none there: no project)."""
    from amic.project import Project, derive

    path = amifile or "Amifile"
    if os.path.isdir(path):
        path = os.path.join(path, "Amifile")
    if not os.path.exists(path):
        if amifile:
            raise UsageError(f"{amifile}: no such Amifile")
        return Project(id=None, name=None)
    from amic.amifile import resolve

    return derive(path, resolve.load(path).name)


def _which(name: str | None) -> str:
    """NAME, else this project's VM, else the only VM there is."""
    from amic.targets.local import machines

    if name:
        return machines.check_name(name)
    store = _store()
    known = machines.names(store)
    if os.path.exists("Amifile"):
        mine = machines.default_name(_project(None).name)
        if mine in known:
            return mine
    if len(known) == 1:
        return known[0]
    raise UsageError("which VM? name one (" + (", ".join(known) or "there are none: amic up")
                     + ")")


def _note(line: str) -> None:
    print(f"amic: {line}", file=sys.stderr)


def cmd_up(args) -> int:
    from amic.targets import get_target
    from amic.targets.local import devvm, machines
    from amic.targets.local.boot import check_services

    services = check_services(value(args, option(UP_OPTIONS, "service")) or [])
    forwards = [devvm.parse_forward(p) for p in args.publish or []]
    devvm.check_forwards(forwards)      # before the image is looked up (and again in up)
    mounts = [devvm.parse_mount(m) for m in args.mount or []]
    project = _project(args.file)
    name = machines.check_name(args.vm_name or machines.default_name(project.name))
    target = get_target("local")
    image = lookup(target, args.image, args.file)
    record, seconds = devvm.up(
        target, image, name=name, project=project, forwards=forwards, mounts=mounts,
        memory=value(args, option(UP_OPTIONS, "memory")), cpus=args.cpus, services=services,
        timeout=value(args, option(UP_OPTIONS, "timeout")), log=_note)
    print(f"{name} is up ({record.accel.upper()}, boot hook {record.boot_result} after "
          f"{seconds:.1f}s)")
    print(f"  ssh:    amic ssh {name}")
    for host, guest in record.forwards:
        print(f"  port:   127.0.0.1:{host} -> {guest}")
    for host, guest in record.mounts:
        print(f"  folder: {host} -> {guest}")
    print(f"  stop:   amic stop {name}")
    return 0 if record.boot_result == "ok" else 1


def cmd_ssh(args) -> int:
    from amic.targets.local import devvm, machines

    command, name = list(args.command), args.name
    if command[:1] == ["--"]:
        command = command[1:]
    words = sys.argv[sys.argv.index("ssh") + 1:] if "ssh" in sys.argv else []
    if words[:1] == ["--"] and name is not None:    # amic ssh -- CMD: argparse took CMD's
        command, name = [name, *command], None      # first word for NAME
    name = _which(name)
    store = _store()
    record = devvm.find(store, name)
    if not machines.running(store, record):
        raise UsageError(f"VM {name!r} is not running (amic up; amic logs {name})")
    return subprocess.run(devvm.ssh_argv(store, record, command)).returncode


def _uptime(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def cmd_ps(args) -> int:
    from amic.targets.local import machines

    store = _store()
    rows = []
    for name in machines.names(store):
        try:
            record = machines.load(store, name)
        except UsageError as exc:       # damaged, or a link where a file was: listed as such
            _note(str(exc))
            rows.append({"name": name, "kind": "vm", "project": None, "project_id": None,
                         "image": "", "state": "damaged", "pid": None, "ssh_port": None,
                         "accel": None, "ports": [], "mounts": [], "uptime": None})
            continue
        if record is None:
            continue
        state = machines.state(store, record)
        rows.append({"name": name, "kind": "vm", "project": record.project,
                     "project_id": record.project_id, "image": record.image, "state": state,
                     "pid": record.pid if state != "exited" else None,
                     "ssh_port": record.ssh_port, "accel": record.accel,
                     "ports": [{"host": h, "guest": g} for h, g in record.forwards],
                     "mounts": [{"host": h, "guest": g} for h, g in record.mounts],
                     "uptime": (time.time() - record.started
                                if state != "exited" and record.started else None)})
    for kept in machines.kept_machines(store):     # amic run --keep: nspawn machines
        rows.append({"name": kept["name"], "kind": "machine", "project": _image_name(kept),
                     "project_id": None, "image": kept["image"],
                     "state": "running" if kept["pid"] else "exited", "pid": kept["pid"],
                     "ssh_port": None, "accel": None, "ports": [], "mounts": [],
                     "uptime": kept["uptime"], "dir": kept["dir"]})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'NAME':<16} {'KIND':<8} {'PROJECT':<14} {'IMAGE':<13} {'STATE':<8} {'UPTIME':<8} "
          "PORTS")
    for r in rows:
        ports = ", ".join([f"127.0.0.1:{r['ssh_port']}->22"] * (r["state"] in ("running", "booting")
                                                                and r["kind"] == "vm")
                          + [f"127.0.0.1:{p['host']}->{p['guest']}" for p in r["ports"]])
        uptime = _uptime(r["uptime"]) if r["uptime"] is not None else "-"
        print(escape_controls(
            f"{r['name']:<16} {r['kind']:<8} {(r['project'] or '-'):<14} {r['image'][:12]:<13} "
            f"{r['state']:<8} {uptime:<8} {ports or '-'}"))
    return 0


def _image_name(kept: dict) -> str | None:
    """The readable project name of a kept machine's image (None: not found)."""
    from amic.contract import TAG_NAME
    from amic.errors import AmicError

    try:
        return _store().lookup(kept["image"]).tags.get(TAG_NAME)
    except AmicError:
        return None


def cmd_stop(args) -> int:
    from amic.targets.local import devvm

    name = _which(args.name)
    what = devvm.stop(_store(), name, timeout=value(args, option(STOP_OPTIONS, "timeout")),
                      log=_note)
    print(f"{name}: {what}")
    return 0


def cmd_rm(args) -> int:
    from amic.targets.local import devvm

    name = _which(args.name)
    devvm.remove(_store(), name, force=args.force, log=_note)
    print(f"{name}: removed")
    return 0


def cmd_logs(args) -> int:
    from amic.targets.local import devvm, machines, vmfiles

    store = _store()
    name = _which(args.name)
    record = devvm.find(store, name)
    vdir = machines.vm_dir(store, name)
    boot_log = vdir / "boot.log"
    if os.path.lexists(boot_log):      # never through a link, never blocked on a FIFO
        print("==> amic boot log <==", flush=True)
        for chunk in vmfiles.chunks(boot_log):
            sys.stdout.write(chunk)
    console = vdir / "console.log"
    if not os.path.lexists(console):
        return 0
    print("==> serial console <==", flush=True)
    if not args.follow:
        for chunk in vmfiles.chunks(console):
            sys.stdout.write(chunk)
        return 0
    for chunk in devvm.follow(console, lambda: machines.running(store, record)):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    return 0
