"""The local target's own commands: ``amic run``, ``images``, ``prune``, ``export``, ``shell``.

Import-light like every command module: the target is imported in the handlers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from amic.cli.common import count_argument
from amic.cli.project import add_project_options
from amic.errors import UsageError


REF_HELP = ("NAME:latest, NAME@ID, an image id (prefix) or cache key, or 'latest' (default): "
            "this project's newest image (docs/devvm.md, \"Image references\")")


def register(sub) -> None:
    _add_run(sub)
    _add_store_commands(sub)


def add_file_option(p) -> None:
    p.add_argument("--file", metavar="AMIFILE", dest="amifile",
                   help="the project whose image 'latest' is (default: ./Amifile)")


def lookup(target, ref: str, amifile: str | None):
    from amic.cli.project import project_here
    from amic.targets.local import refs

    return refs.lookup(target.store, ref, lambda: project_here(amifile))


def _add_run(sub) -> None:
    from amic.cli.common import seconds_argument

    p = sub.add_parser(
        "run", help="boot a local image with systemd-nspawn (boot hook runs for real)",
        description="Boot an image of the local target with systemd-nspawn on a throwaway "
        "layer. The boot hook (amic.service) runs: init for services requested with --service "
        "that the image lacks, then UPDATE for all. Then `amic status` is printed and the "
        "machine powers off (unless --interactive). Exit status: that of `amic status`.")
    p.add_argument("image", nargs="?", default="latest",
                   help=REF_HELP + "; with --vm also an exported .qcow2 file (booted on an "
                   "overlay: the file is not changed)")
    add_file_option(p)
    p.add_argument("--service", "-s", action="append", default=[], metavar="SVC",
                   help="request an extra service (written to /etc/amic/services.d/amic-run)")
    p.add_argument("--interactive", "-i", action="store_true",
                   help="stay in the booted machine's console (leave with Ctrl-] three times)")
    p.add_argument("--timeout", type=seconds_argument, default=600, metavar="SECONDS",
                   help="stop the machine after this long (default: 600)")
    p.add_argument("--vm", action="store_true",
                   help="boot the image's disk (export --format qcow2) under QEMU instead: KVM "
                   "when usable, else emulation; SSH forwarded to a loopback port (docs/devvm.md)")
    p.add_argument("--uefi", action="store_true", help="--vm: boot with UEFI (OVMF), not BIOS")
    p.add_argument("--network", action="store_true",
                   help="--vm: let the guest reach the network (default: QEMU user networking "
                   "with restrict=on, only the forwarded SSH port)")
    p.add_argument("--keep", action="store_true",
                   help="leave the machine running after the boot hook (prints how to reach it)")
    p.set_defaults(func=cmd_run)


def _add_store_commands(sub) -> None:
    """``images``, ``prune``, ``export``, ``shell``: the image store's commands."""
    p = sub.add_parser("images", help="list images and cache entries of the local target")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--all", "-a", action="store_true",
                   help="also list layer checkpoints and bases (default: final images only)")
    add_project_options(p, "only this project's images")
    p.set_defaults(func=cmd_images)

    p = sub.add_parser(
        "prune", help="remove old images, unused layer checkpoints and leftovers of crashed builds",
        description="Keep the newest --keep final images per project (tag amic:project) and "
        "the layers and base they are built on; remove everything else (and machine "
        "directories of builds that crashed). Images without amic:project (built before it, "
        "or without a project identity) stay unless --force. With --name, --project or "
        "--file, only that project's images go (--all: all of them that no other project's "
        "kept image is built on). Refuses while a build is running.")
    add_project_options(p, "prune only this project's images")
    p.add_argument("--force", action="store_true",
                   help="also prune images without amic:project, grouped (and, for one "
                   "project, selected) by their amic:name alone")
    p.add_argument("--keep", type=count_argument, default=1, metavar="N",
                   help="final images kept per project (default: 1)")
    p.add_argument("--all", action="store_true", help="remove every image (bases' roots stay)")
    p.add_argument("--dry-run", "-n", action="store_true", help="only say what would go")
    p.epilog = ("Also removed: scratch directories under tmp/ whose run, shell or export is gone "
                "(after a kill -9, say), with the partial output such an export left beside -o. "
                "Says how many bytes it freed.")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("export", help="write a local image as a tarball, a bootable raw/qcow2 disk or an OCI image")
    p.add_argument("image", help=REF_HELP.replace(" (default)", ""))
    add_file_option(p)
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="file to write (a tar is mode 0600: it holds the whole root filesystem); "
                   "a device or FIFO is written in place (a FIFO's reader is waited for 10s); a "
                   "symbolic link is followed only when root or you own it")
    p.add_argument("--format", "-f", choices=("tar", "raw", "qcow2", "oci"), default="tar",
                   help="tar: the root filesystem (default); raw/qcow2: a bootable disk (BIOS and "
                   "UEFI, see docs/devvm.md); oci: an image archive for podman/docker load")
    p.add_argument("--authorized-key", metavar="FILE", type=Path,
                   help="raw/qcow2: an SSH public key file authorised for root on the disk")
    p.add_argument("--no-authorized-key", action="store_true",
                   help="raw/qcow2: write the disk without any key on purpose (no warning); "
                   "nobody can log in over SSH unless the image itself authorises a key")
    p.add_argument("--compress", action="store_true",
                   help="qcow2: compress the disk (zlib, any QEMU/libvirt/UTM reads it; about a "
                   "third of the size, slower to write) for handing it to someone")
    p.add_argument("--for", dest="platform", metavar="PLATFORM",
                   help="raw/qcow2: make the disk fit to boot there; ec2: NVMe/ENA kernel, DHCP "
                   "on any NIC, the SSH key and hostname from IMDSv2 at boot (docs/ec2.md)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("shell", help="a root shell in a local image (changes are discarded) or "
                       "in a machine kept by --on-error=abort")
    p.add_argument("image", help=REF_HELP.replace(" (default)", "") + "; or a kept "
                   "machine directory")
    add_file_option(p)
    p.add_argument("-c", dest="command", metavar="COMMAND", help="run COMMAND instead of a shell")
    p.set_defaults(func=cmd_shell)

    p = sub.add_parser(
        "rmi", help="remove one local image (with its VM layer and cached VM disk)",
        description="Remove one image of the local target, with the VM layer and cached VM "
        "disk made from it (`amic export --format qcow2`, `amic run --vm`). Refuses while a "
        "shell, run, export, kept machine, build or running VM uses it (unless --force), and "
        "while other images are built on it. The layers below it stay as build cache: "
        "`amic prune` removes those no image needs. Prints what it freed.")
    p.add_argument("image", metavar="IMAGE", help=REF_HELP.replace(" (default)", ""))
    add_file_option(p)
    p.add_argument("--force", action="store_true",
                   help="remove it even while something uses it")
    p.add_argument("--dry-run", "-n", action="store_true", help="only say what would go")
    p.set_defaults(func=cmd_rmi)


def _local():
    from amic.targets import get_target

    return get_target("local")


def cmd_images(args) -> int:
    from amic.cli.project import project_to_prune
    from amic.contract import TAG_AMIFILE, TAG_BASE, TAG_KIND, TAG_NAME, TAG_PROJECT, TAG_SERVICE

    project = project_to_prune(args) if args.name or args.project or args.file else None
    target = _local()
    rows = []
    for img in target.list_images():
        kind = img.tags.get(TAG_KIND, "?")
        if not args.all and kind != "final":
            continue
        if project is not None and img.tags.get(TAG_PROJECT) != project.id:
            continue
        rows.append({"id": img.id, "kind": kind, "key": img.key, "created": img.created,
                     "name": img.tags.get(TAG_NAME), "project": img.tags.get(TAG_PROJECT),
                     "amifile": img.tags.get(TAG_AMIFILE), "service": img.tags.get(TAG_SERVICE),
                     "base": img.tags.get(TAG_BASE), "size": target.image_size(img),
                     "tags": dict(img.tags)})
    rows.sort(key=lambda r: r["created"] or "", reverse=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'IMAGE ID':<13} {'NAME':<16} {'KIND':<6} {'KEY':<13} {'CREATED':<20} {'SIZE':>9}  WHAT")
    for r in rows:
        what = (r["amifile"] or "") if r["kind"] == "final" else (r["service"] or r["base"] or "")
        print(f"{r['id'][:12]:<13} {r['name'] or '-':<16} {r['kind']:<6} {(r['key'] or '-')[:12]:<13} "
              f"{(r['created'] or '-')[:19]:<20} {_size(r['size']):>9}  {what}")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}TB"


def cmd_prune(args) -> int:
    from amic.cli.project import project_to_prune

    project = project_to_prune(args) if args.name or args.project or args.file else None
    target = _local()
    from amic.targets.local import prune
    from amic.targets.local.store import IN_USE

    result = prune.prune(target.store, keep=args.keep, everything=args.all,
                         dry_run=args.dry_run, project=project and project.id,
                         force=args.force, legacy_name=project and project.name)
    removed = list(result.removed)

    verb = "would remove" if args.dry_run else "removed"
    busy = [item.removeprefix(IN_USE) for item in removed if item.startswith(IN_USE)]
    removed = [item for item in removed if not item.startswith(IN_USE)]
    for item in removed:
        print(f"{verb} {item}")
    for item in busy:
        print(f"kept {item}" + ("" if ": in use by " in item
                                else ": in use by a running shell, run or export"),
              file=sys.stderr)
    from amic.targets.local.store import human

    print(f"amic: {verb} {len(removed)} item(s), {'would free' if args.dry_run else 'freed'} "
          f"{human(result.freed)} ({result.freed} bytes)"
          + (f"; kept {len(busy)} in use" if busy else ""), file=sys.stderr)
    return 0


def cmd_rmi(args) -> int:
    from amic.targets.local import prune
    from amic.targets.local.store import human

    target = _local()
    image = lookup(target, args.image, args.amifile)
    result = prune.remove(target.store, image.id, force=args.force, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for item in result.removed:
        print(f"{verb} {item}")
    print(f"amic: {verb} {image.id[:12]}, {'would free' if args.dry_run else 'freed'} "
          f"{human(result.freed)} ({result.freed} bytes)", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from pathlib import Path

    from amic.fsutil import check_output

    check_output(args.output)  # a missing directory is a usage error before any work
    if args.authorized_key is not None and args.no_authorized_key:
        from amic.errors import UsageError

        raise UsageError("--authorized-key and --no-authorized-key exclude each other")
    if args.no_authorized_key and args.format not in ("raw", "qcow2"):
        from amic.errors import UsageError

        raise UsageError("--no-authorized-key goes with --format raw or qcow2")
    target = _local()
    image = lookup(target, args.image, args.amifile)
    from amic.targets.local.disk import NO_KEY_WARNING
    from amic.targets.local.export import export_image

    if args.format in ("raw", "qcow2") and args.authorized_key is None \
            and not args.no_authorized_key and args.platform is None:
        print(f"amic: warning: {NO_KEY_WARNING}", file=sys.stderr)

    export_image(target, image, Path(args.output), fmt=args.format,
                 authorized_key=args.authorized_key, compress=args.compress,
                 platform=args.platform, log=lambda m: print(f"amic: {m}", file=sys.stderr))
    print(f"amic: exported {image.id[:12]} to {args.output}", file=sys.stderr)
    return 0


def cmd_shell(args) -> int:
    from pathlib import Path

    target = _local()
    if (Path(args.image) / "machine.json").exists():
        return target.shell(args.image, args.command)
    return target.shell(lookup(target, args.image, args.amifile).id, args.command)


def cmd_run(args) -> int:
    from amic.engine.progress import Reporter
    from amic.targets.local.boot import check_services

    services = check_services(args.service)   # a mistyped name costs nothing
    target = _local()
    disk = Path(args.image) if args.vm and args.image.endswith(".qcow2") else None
    if disk is not None and not disk.is_file():
        raise UsageError(f"{disk}: no such disk (an exported .qcow2, or an image reference)")
    image = None if disk is not None else lookup(target, args.image, args.amifile)
    reporter = Reporter(mode="plain")
    if args.vm:
        from amic.targets.local import vmrun

        rc, status = vmrun.run_image(target, image, disk=disk, services=services,
                                     keep=args.keep, uefi=args.uefi, restrict=not args.network,
                                     timeout=args.timeout,
                                     on_output=lambda line: reporter.output("vm", line, False),
                                     log=reporter.note)
        print(status.rstrip("\n"))
        return rc
    outcome = target.run_image(image, services, interactive=args.interactive, keep=args.keep,
                               timeout=args.timeout, log=reporter.note,
                               on_output=lambda line: line.strip()
                               and reporter.output("boot", line, False))
    if outcome.status is not None:
        print(outcome.status)
    elif not args.interactive:
        print("amic: the machine stopped before the boot hook reported (see the output above)",
              file=sys.stderr)
    return outcome.exit_code
