"""Checks of service instructions and INIT/UPDATE bodies: AM3xxx."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

from amic.amifile import ir
from amic.errors import Pos
from amic.lint.facts import (
    DOWNLOADERS,
    INSTALL_VERBS,
    INTERPRETERS,
    PACKAGE_MANAGERS,
    SUBST_PIPE_RE,
    UPGRADE_VERBS,
    Found,
    at,
    find_word,
    is_install,
    is_noninteractive,
    is_upgrade,
    script_commands,
    scripts,
    secret_in,
    verb_of,
)
from amic.lint.model import Context, ScriptRef

# --------------------------------------------------------------------------- AM3xxx


def check_update_install(ctx: Context) -> Found:
    for ref in scripts(ctx, "update"):
        for cmd, smap in script_commands(ctx, ref):
            if cmd.name in PACKAGE_MANAGERS and is_install(cmd):
                yield at(smap, cmd.words[0]), (
                    f"{cmd.name} installs packages in UPDATE of {ref.service.name!r}, which runs "
                    "at every boot; use PACKAGES (or INIT) so it is baked once")


def check_init_install_yes(ctx: Context) -> Found:
    for ref in scripts(ctx, "init"):
        for cmd, smap in script_commands(ctx, ref):
            if cmd.name in PACKAGE_MANAGERS and is_install(cmd) and not is_noninteractive(cmd):
                flag = "-n" if cmd.name == "zypper" else "-y"
                yield at(smap, cmd.words[0]), (
                    f"{cmd.name} install without {flag} waits for an answer that never comes "
                    "during a bake")


def _debian_frontend_set(ctx: Context, ref: ScriptRef) -> bool:
    envs = ctx.amifile.envs + ref.service.envs
    if any(e.name == "DEBIAN_FRONTEND" and e.value == "noninteractive" for e in envs):
        return True
    return bool(re.search(r"DEBIAN_FRONTEND=['\"]?noninteractive", ref.script.text))


def check_init_debian_frontend(ctx: Context) -> Found:
    for ref in scripts(ctx, "init"):
        if _debian_frontend_set(ctx, ref):
            continue
        for cmd, smap in script_commands(ctx, ref):
            if cmd.name in ("apt-get", "apt", "aptitude") and (is_install(cmd) or is_upgrade(cmd)):
                yield at(smap, cmd.words[0]), (
                    f"{cmd.name} without DEBIAN_FRONTEND=noninteractive can stop at a debconf "
                    "prompt (tzdata, keyboard-configuration, ...); set it on the command or with "
                    "ENV DEBIAN_FRONTEND=noninteractive")


def check_init_prefer_packages(ctx: Context) -> Found:
    for ref in scripts(ctx, "init"):
        for cmd, smap in script_commands(ctx, ref):
            if cmd.name in INSTALL_VERBS and is_install(cmd):
                yield at(smap, cmd.words[0]), (
                    f"packages installed with {cmd.name} in INIT; PACKAGES is portable across "
                    "distributions and installs non-interactively")


def check_pipe_to_shell(ctx: Context) -> Found:
    for ref in ctx.scripts():
        smap = ctx.script_map(ref.script)
        seen: set[int] = set()
        for cmd in ctx.commands(ref.script):
            src = cmd.piped_from
            if src and src.name in DOWNLOADERS and cmd.name in INTERPRETERS:
                seen.add(src.first.index)
                yield at(smap, src.first), (
                    f"{src.name} output piped into {cmd.name} runs whatever the server sends, "
                    "as root; download to a file, verify a checksum or signature, then run it")
        for index, line in enumerate(smap.text_lines):
            match = SUBST_PIPE_RE.search(line)
            if match and index not in seen:
                yield smap.pos(index, match.start() + 1), (
                    "a shell runs a downloaded script, as root; download to a file, verify a "
                    "checksum or signature, then run it")


def check_script_secret(ctx: Context) -> Found:
    for ref in ctx.scripts():
        smap = ctx.script_map(ref.script)
        for index, line in enumerate(smap.text_lines):
            what = secret_in(line)
            if what:
                yield smap.pos(index, 1 + len(line) - len(line.lstrip())), (
                    f"{ref.phase.upper()} of {ref.service.name!r} contains {what}; scripts are "
                    "stored in the artifact and the image: use an ARG")


_VARIABLE_RE = re.compile(r"\$\{?([A-Za-z_]\w*)")


def check_update_secret(ctx: Context) -> Found:
    """A SECRET named in an UPDATE body: secrets reach INIT only, at build time."""
    af = ctx.amifile
    declared = {s.name for s in af.secrets}
    for svc in [*af.services, *ctx.external.values()]:
        declared.update(s.name for s in svc.secrets)
    if not declared:
        return
    for ref in scripts(ctx, "update"):
        smap = ctx.script_map(ref.script)
        for index, line in enumerate(smap.text_lines):
            for match in _VARIABLE_RE.finditer(line):
                if match[1] in declared:
                    yield smap.pos(index, match.start() + 1), (
                        f"UPDATE of {ref.service.name!r} reads ${match[1]}, a SECRET: secrets "
                        "reach INIT only (at build time, never stored), so at every boot it is "
                        "empty here; fetch what UPDATE needs at boot (e.g. from a secret store)")


def check_sudo(ctx: Context) -> Found:
    for ref in ctx.scripts():
        for cmd, smap in script_commands(ctx, ref):
            for wrapper in cmd.wrappers:
                if wrapper.text in ("sudo", "doas"):
                    yield at(smap, wrapper), (
                        f"{wrapper.text} is not needed: INIT and UPDATE already run as root, and "
                        "it may be missing or ask for a password on a fresh image")


def _copy_source_exists(ctx: Context, copy: ir.Copy, source: str) -> bool:
    base = Path(copy.context) if copy.context else ctx.base_dir
    path = Path(source) if Path(source).is_absolute() else base / source
    if any(ch in source for ch in "*?["):
        return any(path.parent.glob(path.name))
    return path.exists()


def _copy_sources(ctx: Context) -> Iterator[tuple[ir.Copy, str, Pos]]:
    """Every COPY source of the file, with the position of its word."""
    for svc in ctx.amifile.services:
        for copy in svc.copies:
            for source in copy.sources:
                yield copy, source, find_word(ctx, copy.pos, "COPY", source, copy.pos.line)


def check_copy_missing(ctx: Context) -> Found:
    for copy, source, pos in _copy_sources(ctx):
        if not _copy_source_exists(ctx, copy, source):
            where = Path(copy.context) if copy.context else ctx.base_dir
            yield pos, f"COPY source {source!r} does not exist (looked in {where})"


def _escapes(ctx: Context, copy: ir.Copy, source: str) -> bool:
    # compile's rule (compile/context.py), without --context: the Amifile's directory
    base = Path(copy.context) if copy.context else ctx.base_dir
    if Path(source).is_absolute():
        return True
    root = os.path.realpath(base)
    real = os.path.realpath(os.path.join(base, source.split("*")[0].split("?")[0] or "."))
    return not (real == root or real.startswith(root.rstrip("/") + "/"))


def check_copy_outside_context(ctx: Context) -> Found:
    for copy, source, pos in _copy_sources(ctx):
        if _escapes(ctx, copy, source):
            yield pos, (f"COPY source {source!r} is outside the build context (the Amifile's "
                        "directory); compile refuses it: put the file beside the Amifile, or "
                        "name a wider context with --context DIR")


def check_init_upgrade(ctx: Context) -> Found:
    for ref in scripts(ctx, "init"):
        for cmd, smap in script_commands(ctx, ref):
            if cmd.name in UPGRADE_VERBS and is_upgrade(cmd):
                yield at(smap, cmd.words[0]), (
                    f"'{cmd.name} {verb_of(cmd)}' makes the layer depend on the day it was baked, "
                    "while its cache key does not change; pin versions, or let the base image "
                    "bring updates")


_REBOOT_SYSTEMCTL = {"reboot", "poweroff", "halt", "kexec", "soft-reboot"}


def check_reboot(ctx: Context) -> Found:
    for ref in ctx.scripts():
        for cmd, smap in script_commands(ctx, ref):
            name = cmd.name
            hit = (name in ("reboot", "shutdown", "poweroff", "halt")
                   or (name == "systemctl" and verb_of(cmd) in _REBOOT_SYSTEMCTL)
                   or (name in ("init", "telinit") and cmd.args[:1] in (["0"], ["6"])))
            if hit:
                why = ("cuts the build's SSH session and fails the bake" if ref.phase == "init"
                       else "runs at every boot: the machine reboots forever")
                yield at(smap, cmd.words[0]), f"{name} in {ref.phase.upper()} {why}"


def _inherited_packages(ctx: Context) -> dict[str, dict[str, str]]:
    """For each service, the packages its requirements (directly or not) install, each with
    the requirement that brings it: a direct requirement first, else the first one in
    REQUIRES order that inherits it.

    Computed bottom-up in one pass over the graph (requirements before the services that
    need them), keeping only packages that two services list, so the cost is the number of
    REQUIRES lines times the number of such packages, not the size of every closure.
    """
    known = ctx.services()
    holders: dict[str, int] = {}
    for svc in known.values():
        for package in set(svc.packages):
            holders[package] = holders.get(package, 0) + 1
    shared = {p for p, n in holders.items() if n > 1}
    result: dict[str, dict[str, str]] = {}
    if not shared:
        return result
    for name in _requirements_first(ctx):
        reqs = [r.name for r in known[name].requires if r.name in known and r.name != name]
        if len(reqs) == 1 and not shared.intersection(known[reqs[0]].packages):
            result[name] = result.get(reqs[0], {})  # shared, never mutated: a chain is cheap
            continue
        merged: dict[str, str] = {}
        for req in reversed(reqs):  # earlier requirements overwrite later ones
            merged.update(result.get(req, {}))
        for req in reversed(reqs):
            merged.update((p, req) for p in known[req].packages if p in shared)
        result[name] = merged  # (a cycle can make a service its own holder: see below)
    return result


def _requirements_first(ctx: Context) -> list[str]:
    """Every known service, each after the services it requires (iterative post-order; a
    cycle is cut where it closes)."""
    known = ctx.services()
    done: set[str] = set()
    order: list[str] = []
    for root in known:
        if root in done:
            continue
        done.add(root)
        stack = [(root, iter(known[root].requires))]
        while stack:
            name, reqs = stack[-1]
            req = next(reqs, None)
            if req is None:
                stack.pop()
                order.append(name)
            elif req.name in known and req.name not in done:
                done.add(req.name)
                stack.append((req.name, iter(known[req.name].requires)))
    return order


def _package_words(ctx: Context, svc: ir.Service) -> dict[str, list[Pos]]:
    """Where each word of the service's PACKAGES lines is, in order (one scan per service)."""
    lines = ctx.lines
    end = min(ctx.service_end(svc) or len(lines), len(lines))
    where: dict[str, list[Pos]] = {}
    in_keyword = False
    for line in range(svc.pos.line, end + 1):
        text = lines[line - 1]
        head = text.split(None, 1)[0] if text.strip() else ""
        skip = 0
        if head.upper() == "PACKAGES":
            in_keyword, skip = True, text.index(head) + len(head)
        if in_keyword:
            for match in _WORD_RE.finditer(text, skip):
                where.setdefault(match.group(), []).append(Pos(svc.pos.file, line,
                                                               match.start() + 1))
        in_keyword = in_keyword and text.rstrip().endswith("\\")
    return where


_WORD_RE = re.compile(r"[^\s\\]+")


def _package_pos(ctx: Context, svc: ir.Service, words: dict[str, list[Pos]], package: str,
                 nth: int) -> Pos:
    found = words.get(package, ())
    if len(found) >= nth:
        return found[nth - 1]
    return find_word(ctx, svc.pos, "PACKAGES", package, ctx.service_end(svc), nth=nth)


def check_duplicate_packages(ctx: Context) -> Found:
    inherited_by = _inherited_packages(ctx)
    for svc in ctx.amifile.services:
        inherited = inherited_by.get(svc.name, {})
        seen: dict[str, int] = {}
        words: dict[str, list[Pos]] | None = None
        for package in svc.packages:
            count = seen.get(package, 0)
            holder = inherited.get(package)
            holder = None if holder == svc.name else holder
            if count or holder:
                words = _package_words(ctx, svc) if words is None else words
            if count:
                yield (_package_pos(ctx, svc, words, package, count + 1),
                       f"package {package} is listed twice in {svc.name!r}")
            elif holder:
                yield (_package_pos(ctx, svc, words, package, 1),
                       f"package {package} is already installed by {holder!r}, "
                       f"which {svc.name!r} requires")
            seen[package] = count + 1
