"""``amic build``, ``run``, ``images``, ``prune``, ``export``, ``shell``: argument parsing and output.

Registered by ``amic.cli.main`` through :func:`add_build_parsers`. Import-light on
purpose: the engine, the targets and the compiler are imported inside the
handlers, and an unchanged build is answered from the build memo
(``amic.engine.memo``) before any of them is imported; on ec2, once the target confirmed
it with two DescribeImages calls (``Ec2Target.confirm_memo``, without boto3).
"""

from __future__ import annotations

import json
import sys

TARGET_HELP = ("where to build: local (root filesystems on this machine), ec2, or "
               "ssh://user@host[:port] (default: $AMIC_TARGET; else ec2 when AWS is configured in the "
               "environment or ~/.aws; else local)")


def add_build_parsers(sub) -> None:
    from amic.cli.common import add_amifile_argument, add_build_arg_option

    p = sub.add_parser(
        "build", help="bake an image: run each service's init, reusing cached layers",
        description="Build an image from an Amifile. Cached layers are reused (a layer is one "
        "service's init); a line per layer says CACHED or RUN, why it ran and how long it took. "
        "The final image id alone goes to stdout; everything else to stderr.")
    add_amifile_argument(p)
    p.add_argument("--target", metavar="TARGET", help=TARGET_HELP)
    add_build_arg_option(p)
    p.add_argument("--no-cache", action="store_true",
                   help="run every layer even if it is cached (results are cached again)")
    p.add_argument("--checkpoint", metavar="POLICY",
                   help="which layers to keep as reusable images: none, last, all, auto (when "
                   "init time since the last checkpoint exceeds a snapshot's cost), or service "
                   "names separated by commas; the last layer is always kept unless none "
                   "(default: the target's; local: all, ec2: last)")
    p.add_argument("--on-error", choices=["cleanup", "abort"], default="cleanup",
                   help="abort: leave the failed machine for debugging and print how to reach it "
                   "(default: cleanup)")
    p.add_argument("--progress", choices=["auto", "tty", "plain"], default="auto",
                   help="live status line (tty) or one line per event (plain); default: tty "
                   "when stderr is a terminal")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="print only warnings, errors and the image id")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON on stdout instead of the bare image id")
    p.add_argument("--manifest", metavar="FILE",
                   help="also write the JSON result (image id, keys, timings) to FILE")
    try:  # the ec2 target's options (region, subnet, AMI name, ...), when it is installed
        from amic.cli.ec2 import add_ec2_build_options
    except ImportError:
        pass
    else:
        add_ec2_build_options(p)
    from amic.cli.ssh import add_ssh_build_options

    add_ssh_build_options(p)
    p.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "run", help="boot a local image with systemd-nspawn (boot hook runs for real)",
        description="Boot an image of the local target with systemd-nspawn on a throwaway "
        "layer. The boot hook (amic.service) runs: init for services requested with --service "
        "that the image lacks, then UPDATE for all. Then `amic status` is printed and the "
        "machine powers off (unless --interactive). Exit status: that of `amic status`.")
    p.add_argument("image", nargs="?", default="latest",
                   help="image id (prefix), cache key, or 'latest' (default)")
    p.add_argument("--service", "-s", action="append", default=[], metavar="SVC",
                   help="request an extra service (written to /etc/amic/services.d/amic-run)")
    p.add_argument("--interactive", "-i", action="store_true",
                   help="stay in the booted machine's console (leave with Ctrl-] three times)")
    p.add_argument("--timeout", type=float, default=600, metavar="SECONDS",
                   help="stop the machine after this long (default: 600)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("images", help="list images and cache entries of the local target")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--all", "-a", action="store_true",
                   help="also list layer checkpoints and bases (default: final images only)")
    p.set_defaults(func=cmd_images)

    p = sub.add_parser(
        "prune", help="remove old images, unused layer checkpoints and leftovers of crashed builds",
        description="Keep the newest --keep final images per Amifile (by its path) and the "
        "layers and base "
        "they are built on; remove everything else (and machine directories of builds that "
        "crashed). Refuses while a build is running.")
    p.add_argument("--keep", type=int, default=1, metavar="N",
                   help="final images kept per Amifile (default: 1)")
    p.add_argument("--all", action="store_true", help="remove every image (bases' roots stay)")
    p.add_argument("--dry-run", "-n", action="store_true", help="only say what would go")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("export", help="write a local image's root filesystem as a tarball")
    p.add_argument("image", help="image id (prefix), cache key, or 'latest'")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="tarball to write")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("shell", help="a root shell in a local image (changes are discarded) or "
                       "in a machine kept by --on-error=abort")
    p.add_argument("image", help="image id (prefix), 'latest', or a kept machine directory")
    p.add_argument("-c", dest="command", metavar="COMMAND", help="run COMMAND instead of a shell")
    p.set_defaults(func=cmd_shell)


# -- build ----------------------------------------------------------------------


def _emit(args, result: dict) -> None:
    text = json.dumps(result, indent=2)
    if args.manifest:
        with open(args.manifest, "w") as fh:
            fh.write(text + "\n")
    if args.json:
        print(text)
    else:
        print(result["image_id"])


def cmd_build(args) -> int:
    from amic.cli.common import build_args_from
    from amic.engine.progress import short
    from amic.targets import MEMO, default_target_spec, split_spec

    build_args = build_args_from(args.build_arg)
    spec = args.target or default_target_spec()
    scheme, rest = split_spec(spec)
    target = None
    if not args.no_cache and scheme in MEMO and not rest:
        import time

        t0 = time.monotonic()
        from amic.engine import memo as buildmemo

        found = buildmemo.lookup_with_facts(args.amifile, build_args, scheme)
        memo = None if found is None else found[0]
        if memo is not None and MEMO[scheme]:
            # The target must confirm the hit (ec2: with AWS); if not, the full path runs.
            from amic.targets import get_target

            target = get_target(spec, args)
            if not target.confirm_memo(memo, found[1]):
                memo = None
        if memo is not None:
            if not args.quiet:
                n = len(memo["layers"])
                lines = [f"[{i}/{n}] {r['service']:<16} CACHED            unchanged"
                         for i, r in enumerate(memo["layers"], 1)]
                lines.append(f"amic: unchanged: image {short(memo['image_id'])} "
                             f"(final key {memo['final_key'][:12]})")
                sys.stderr.write("\n".join(lines) + "\n")
            memo["timings"] = {"total": round(time.monotonic() - t0, 3)}
            _emit(args, memo)
            return 0

    from amic.engine.build import BuildOptions, build
    from amic.engine.progress import Reporter
    from amic.targets import get_target

    target = target or get_target(spec, args)
    options = BuildOptions(amifile=args.amifile, build_args=build_args, no_cache=args.no_cache,
                           checkpoint=args.checkpoint, on_error=args.on_error)
    reporter = Reporter(mode=args.progress, quiet=args.quiet)
    try:
        result = build(target, options, reporter)
    finally:
        reporter.close()
    _emit(args, result.to_json())
    return 0


# -- local-target commands ------------------------------------------------------------


def _local(spec: str | None = None):
    from amic.errors import UsageError
    from amic.targets import get_target

    target = get_target("local" if spec is None else spec)
    if target.name != "local":
        raise UsageError("this command works on the local target only")
    return target


def cmd_images(args) -> int:
    from amic.contract import TAG_AMIFILE, TAG_BASE, TAG_KIND, TAG_SERVICE

    target = _local()
    rows = []
    for img in target.list_images():
        kind = img.tags.get(TAG_KIND, "?")
        if not args.all and kind != "final":
            continue
        rows.append({"id": img.id, "kind": kind, "key": img.key, "created": img.created,
                     "amifile": img.tags.get(TAG_AMIFILE), "service": img.tags.get(TAG_SERVICE),
                     "base": img.tags.get(TAG_BASE), "size": target.image_size(img),
                     "tags": dict(img.tags)})
    rows.sort(key=lambda r: r["created"] or "", reverse=True)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'IMAGE ID':<13} {'KIND':<6} {'KEY':<13} {'CREATED':<20} {'SIZE':>9}  WHAT")
    for r in rows:
        what = (r["amifile"] or "") if r["kind"] == "final" else (r["service"] or r["base"] or "")
        print(f"{r['id'][:12]:<13} {r['kind']:<6} {(r['key'] or '-')[:12]:<13} "
              f"{(r['created'] or '-')[:19]:<20} {_size(r['size']):>9}  {what}")
    return 0


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1000
    return f"{n:.1f}TB"


def cmd_prune(args) -> int:
    target = _local()
    removed = target.prune(keep=args.keep, everything=args.all, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for item in removed:
        print(f"{verb} {item}")
    print(f"amic: {verb} {len(removed)} item(s)", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from pathlib import Path

    target = _local()
    image = target.lookup(args.image)
    target.export(image, Path(args.output))
    print(f"amic: exported {image.id[:12]} to {args.output}", file=sys.stderr)
    return 0


def cmd_shell(args) -> int:
    return _local().shell(args.image, args.command)


def cmd_run(args) -> int:
    from pathlib import Path

    from amic.engine.progress import Reporter
    from amic.targets.local import rootfs

    target = _local()
    image = target.lookup(args.image)
    reporter = Reporter(mode="plain")
    for name in args.service:
        if not name.replace("-", "a").replace("_", "a").isalnum() or not name[:1].islower():
            from amic.errors import UsageError

            raise UsageError(f"--service {name!r}: not a service name")

    def prepare(lowers, upper):
        if not args.service:
            return
        src = Path(upper.parent, "services")
        src.write_text("\n".join(args.service) + "\n")
        rc = rootfs.run_in_root(lowers, upper, "mkdir -p /etc/amic/services.d && "
                                "cat > /etc/amic/services.d/amic-run", stdin_path=src)
        if rc != 0:
            from amic.errors import BuildError

            raise BuildError("could not write /etc/amic/services.d/amic-run")

    reporter.note(f"booting {image.id[:12]} with systemd-nspawn"
                  + (f"; requested: {' '.join(args.service)}" if args.service else ""))
    rc, report = target.boot(image, services=args.service, interactive=args.interactive,
                             timeout=args.timeout,
                             on_output=lambda line: line.strip() and reporter.output("boot", line,
                                                                                     False),
                             prepare=prepare)
    if args.interactive:
        return rc
    if not report:
        print("amic: the machine stopped before the boot hook reported (see the output above)",
              file=sys.stderr)
        return 1
    lines = report.rstrip("\n").splitlines()
    status_rc = 1
    if lines and lines[-1].startswith("exit "):
        status_rc = int(lines.pop()[5:] or 1)
    print("\n".join(lines))
    return 0 if status_rc == 0 else 1
