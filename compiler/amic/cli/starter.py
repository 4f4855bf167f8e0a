"""``amic init``: write a commented starter Amifile (``amic.amifile.starter``)."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser(
        "init", help="write a commented starter Amifile here",
        description="Write a commented starter Amifile (FROM, NAME, a stock service, one "
        "service of your own with INIT and UPDATE) that `amic lint` passes clean. Refuses "
        "to overwrite an existing file unless --force.")
    p.add_argument("path", nargs="?", default="Amifile", metavar="PATH",
                   help="the file, or a directory to write Amifile into (default: ./Amifile)")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.set_defaults(func=cmd_init)


def cmd_init(args) -> int:
    from amic.amifile.starter import write_starter

    from amic.diagnostics import escape_controls

    write_starter(args.path, force=args.force)
    print(f"amic: wrote {escape_controls(args.path)}; next: amic lint, then amic build --target local",
          file=sys.stderr)
    return 0
