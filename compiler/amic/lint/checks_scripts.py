"""Checks of service instructions and INIT/UPDATE bodies: AM3xxx."""

from __future__ import annotations

import re
from pathlib import Path

from amic.amifile import ir
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
    service_end,
    verb_of,
)
from amic.lint.model import Context, ScriptRef
from amic.lint.shell import ScriptMap, commands

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
        smap = ScriptMap(ref.script, ctx.lines)
        seen: set[int] = set()
        for cmd in commands(ref.script.text):
            src = cmd.piped_from
            if src and src.name in DOWNLOADERS and cmd.name in INTERPRETERS:
                seen.add(src.first.index)
                yield at(smap, src.first), (
                    f"{src.name} output piped into {cmd.name} runs whatever the server sends, "
                    "as root; download to a file, verify a checksum or signature, then run it")
        for index, line in enumerate(ref.script.text.splitlines()):
            match = SUBST_PIPE_RE.search(line)
            if match and index not in seen:
                yield smap.pos(index, match.start() + 1), (
                    "a shell runs a downloaded script, as root; download to a file, verify a "
                    "checksum or signature, then run it")


def check_script_secret(ctx: Context) -> Found:
    for ref in ctx.scripts():
        smap = ScriptMap(ref.script, ctx.lines)
        for index, line in enumerate(ref.script.text.splitlines()):
            what = secret_in(line)
            if what:
                yield smap.pos(index, 1 + len(line) - len(line.lstrip())), (
                    f"{ref.phase.upper()} of {ref.service.name!r} contains {what}; scripts are "
                    "stored in the artifact and the image: use an ARG")


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


def check_copy_missing(ctx: Context) -> Found:
    for svc in ctx.amifile.services:
        for copy in svc.copies:
            for source in copy.sources:
                if not _copy_source_exists(ctx, copy, source):
                    where = Path(copy.context) if copy.context else ctx.base_dir
                    yield (find_word(ctx, copy.pos, "COPY", source, copy.pos.line),
                           f"COPY source {source!r} does not exist (looked in {where})")


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


def _requirement_closure(ctx: Context, name: str) -> list[ir.Service]:
    """Every service ``name`` requires, directly or not (cycle-safe), nearest first."""
    known = ctx.services()
    return [known[d] for d in ctx.requirement_closure(name)]


def check_duplicate_packages(ctx: Context) -> Found:
    for svc in ctx.amifile.services:
        end = service_end(ctx, svc)
        inherited: dict[str, str] = {}
        for dep in _requirement_closure(ctx, svc.name):
            for package in dep.packages:
                inherited.setdefault(package, dep.name)
        seen: list[str] = []
        for package in svc.packages:
            if package in seen:
                yield (find_word(ctx, svc.pos, "PACKAGES", package, end,
                                  nth=seen.count(package) + 1),
                       f"package {package} is listed twice in {svc.name!r}")
            elif package in inherited:
                yield (find_word(ctx, svc.pos, "PACKAGES", package, end),
                       f"package {package} is already installed by {inherited[package]!r}, "
                       f"which {svc.name!r} requires")
            seen.append(package)
