"""Checks of the whole file: AM4xxx (services, requirements, ARGs, layer order)."""

from __future__ import annotations

import re
from pathlib import Path

from amic.amifile import ir
from amic.lint.facts import PACKAGE_MANAGERS, Found, is_install
from amic.lint.model import Context
from amic.lint.shell import commands

# --------------------------------------------------------------------------- AM4xxx


def check_unknown_service(ctx: Context) -> Found:
    if not ctx.includes_resolved:
        return  # an unresolved INCLUDE may declare it; the resolver error says why
    known = ctx.services()
    for svc in ctx.amifile.services:
        for req in svc.requires:
            if req.name not in known:
                yield req.pos, f"{svc.name!r} requires unknown service {req.name!r}"
    for req in ctx.amifile.enables:
        if req.name not in known:
            yield req.pos, f"ENABLE names unknown service {req.name!r}"


def check_cycle(ctx: Context) -> Found:
    """One finding per cycle, found by a depth-first search (linear in the graph)."""
    known = ctx.services()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    for svc in ctx.amifile.services:
        if svc.name in state:
            continue
        # Iterative DFS: (service, index of the next requirement to follow).
        path: list[str] = [svc.name]
        stack: list[tuple[str, int]] = [(svc.name, 0)]
        state[svc.name] = 1
        while stack:
            name, i = stack[-1]
            reqs = known[name].requires if name in known else ()
            if i >= len(reqs):
                stack.pop()
                path.pop()
                state[name] = 2
                continue
            stack[-1] = (name, i + 1)
            req = reqs[i]
            if req.name not in known:
                continue
            if state.get(req.name) == 1:
                chain = path[path.index(req.name):]
                # Point at the start service's requirement that enters the cycle.
                start = known[chain[0]]
                first = next((r for r in start.requires if len(chain) > 1 and r.name == chain[1]),
                             req)
                yield first.pos, "REQUIRES cycle: " + " -> ".join([*chain, chain[0]])
            elif req.name not in state:
                state[req.name] = 1
                path.append(req.name)
                stack.append((req.name, 0))


def _referenced(name: str, text: str) -> bool:
    return re.search(r"\$(?:" + re.escape(name) + r"\b|\{" + re.escape(name) + r"\b)",
                     text) is not None


def check_unused_arg(ctx: Context) -> Found:
    af = ctx.amifile
    texts = [ref.script.text for ref in ctx.scripts()]
    texts += [e.value for e in af.envs] + [lb.value for lb in af.labels]
    texts += [af.base.ref] if af.base else []
    for svc in [*af.services, *ctx.external.values()]:
        texts += [e.value for e in svc.envs] + [s.text for s in svc.inits + svc.updates]
        texts += [p for c in svc.copies for p in (*c.sources, c.dest)]
        texts += list(svc.packages)
    blob = "\n".join(texts)
    for arg in af.args:
        if not _referenced(arg.name, blob):
            yield arg.pos, (f"ARG {arg.name} is never used (no ${arg.name} or ${{{arg.name}}} "
                            "in a script, ENV or LABEL)")


def _baked(ctx: Context) -> list[str]:
    """Names of the services baked by default: ENABLE (or every service declared here),
    with their requirements."""
    af = ctx.amifile
    roots = [r.name for r in af.enables] if af.enables else [s.name for s in af.services]
    baked: dict[str, None] = {}
    for root in roots:
        baked.setdefault(root)
        for name in ctx.requirement_closure(root):
            baked.setdefault(name)
    return list(baked)


def layer_order(ctx: Context) -> list[str]:
    """The baked services in layer order: topological, ties broken by declaration order."""
    known = ctx.services()
    baked = set(_baked(ctx))
    declared = [n for n in [*ctx.external, *(s.name for s in ctx.amifile.services)]
                if n in baked]
    declared = list(dict.fromkeys(declared))
    order: list[str] = []
    while len(order) < len(declared):
        ready = next((n for n in declared if n not in order and all(
            r.name in order or r.name not in baked or r.name == n
            for r in known[n].requires)), None)
        if ready is None:  # a cycle: reported by AM4002; finish in declaration order
            order += [n for n in declared if n not in order]
            break
        order.append(ready)
    return order


def check_unreachable_service(ctx: Context) -> Found:
    if not ctx.amifile.enables:
        return
    baked = set(_baked(ctx))
    for svc in ctx.amifile.services:
        if svc.name not in baked:
            yield svc.pos, (f"service {svc.name!r} is neither enabled nor required by an enabled "
                            "service: it is only installed when requested at boot")


_HEAVY_COMMANDS = {"make", "cmake", "ninja", "cargo", "go", "gcc", "cc", "mvn", "gradle",
                   "cpanm", "cpan", "gem", "npm", "yarn", "pnpm", "pip", "pip3", "bundle",
                   "composer", "curl", "wget", "git", "pipx", "uv", "poetry"}


def _heavy(svc: ir.Service) -> str | None:
    """Why a service's init layer is slow to rebuild, or ``None``."""
    if svc.packages:
        return f"installs {len(svc.packages)} package(s)"
    for script in svc.inits:
        for cmd in commands(script.text):
            if cmd.name in PACKAGE_MANAGERS and is_install(cmd):
                return f"runs {cmd.name} install"
            if cmd.name in _HEAVY_COMMANDS:
                return f"runs {cmd.name}"
    return None


def _tree_copy(ctx: Context, copy: ir.Copy) -> str | None:
    """A COPY source that is a directory tree (application code changes often), if any."""
    base = Path(copy.context) if copy.context else ctx.base_dir
    for source in copy.sources:
        path = Path(source) if Path(source).is_absolute() else base / source
        if source.endswith("/") or source in (".", "./") or path.is_dir():
            return source
    return None


def check_cache_busting_copy(ctx: Context) -> Found:
    order = layer_order(ctx)
    known = ctx.services()
    own = {s.name for s in ctx.amifile.services}
    for k, name in enumerate(order):
        svc = known[name]
        if name not in own:
            continue
        tree = next(((c, t) for c in svc.copies if (t := _tree_copy(ctx, c))), None)
        if tree is None:
            continue
        copy, source = tree
        for later in order[k + 1:]:
            why = _heavy(known[later])
            if why is None:
                continue
            depends = name in ctx.requirement_closure(later)
            fix = (f"move the COPY into a service that requires {later!r}" if depends else
                   f"declare {later!r} before {name!r} or make {name!r} require it")
            yield copy.pos, (
                f"COPY {source} in {name!r} comes before {later!r} (which {why}) in the layer "
                f"order: every change under {source} rebuilds {later!r} too; {fix}")
            break
