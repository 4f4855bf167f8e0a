"""Checks of the whole file: AM4xxx (services, requirements, ARGs, layer order)."""

from __future__ import annotations

import heapq
import re
from pathlib import Path

from amic.amifile import ir
from amic.diagnostics import MAX_SHOWN
from amic.lint.facts import PACKAGE_MANAGERS, Found, is_install
from amic.lint.model import Context

# --------------------------------------------------------------------------- AM4xxx


def check_unknown_service(ctx: Context) -> Found:
    if not ctx.includes_resolved:
        return  # an unresolved INCLUDE may declare it; the resolver error says why
    known = ctx.services()
    names: list[str] = []   # sorted once, on the first unknown name
    unknown = [(req, f"service {svc.name!r} requires unknown service {req.name!r}")
               for svc in ctx.amifile.services for req in svc.requires if req.name not in known]
    unknown += [(req, f"ENABLE names unknown service {req.name!r}")
                for req in ctx.amifile.enables if req.name not in known]
    for k, (req, message) in enumerate(unknown):
        if k < MAX_SHOWN:   # what compile suggests for the errors it shows; a search of
            names = names or sorted(known)   # every name each is no cost to pay 10,000 times
            message += _did_you_mean(req.name, names)
        yield req.pos, message


def _did_you_mean(name: str, known: list[str]) -> str:
    """The suggestion ``amic compile`` makes for the same mistake (resolve.py), word for word."""
    import difflib  # only for a finding: keeps a clean lint fast

    close = difflib.get_close_matches(name, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def check_cycle(ctx: Context) -> Found:
    """One finding per cycle, found by an iterative depth-first search (linear in the graph,
    any depth)."""
    known = ctx.services()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    for svc in ctx.amifile.services:
        if svc.name in state:
            continue
        # (service, index of the next requirement to follow); on_path: name -> depth.
        path: list[str] = [svc.name]
        on_path: dict[str, int] = {svc.name: 0}
        stack: list[tuple[str, int]] = [(svc.name, 0)]
        state[svc.name] = 1
        while stack:
            name, i = stack[-1]
            reqs = known[name].requires if name in known else ()
            if i >= len(reqs):
                stack.pop()
                del on_path[path.pop()]
                state[name] = 2
                continue
            stack[-1] = (name, i + 1)
            req = reqs[i]
            if req.name not in known:
                continue
            if state.get(req.name) == 1:
                start = on_path[req.name]
                # Point at the start service's requirement that enters the cycle: the one
                # its stack entry followed last (no search through its REQUIRES).
                entered = stack[start][1] - 1 if start + 1 < len(path) else None
                first = known[req.name].requires[entered] if entered is not None else req
                if start + 1 == len(path) and req.name == name:   # compile's own words
                    yield req.pos, f"service {name!r} requires itself: {name} -> {name}"
                else:
                    yield first.pos, "REQUIRES cycle: " + _chain(path, start)
            elif req.name not in state:
                state[req.name] = 1
                on_path[req.name] = len(path)
                path.append(req.name)
                stack.append((req.name, 0))


def _chain(path: list[str], start: int, most: int = 12) -> str:
    """``a -> b -> c -> a``; a long cycle shows its ends and how many are left out."""
    names = path[start:start + most + 1]
    if len(path) - start > most + 1:
        left = len(path) - start - most
        names = [*path[start:start + most // 2], f"... ({left} more)", *path[-(most // 2):]]
    return " -> ".join([*names, path[start]])


_REFERENCE_RE = re.compile(r"\$\{?(\w+)")


def check_unused_arg(ctx: Context) -> Found:
    af = ctx.amifile
    texts = [ref.script.text for ref in ctx.scripts()]
    texts += [e.value for e in af.envs] + [lb.value for lb in af.labels]
    texts += [af.base.ref] if af.base else []
    for svc in [*af.services, *ctx.external.values()]:
        texts += [e.value for e in svc.envs] + [s.text for s in svc.inits + svc.updates]
        texts += [p for c in svc.copies for p in (*c.sources, c.dest)]
        texts += list(svc.packages)
    # Every $NAME and ${NAME in one pass, then a set lookup per ARG (not a search each).
    used = {m.group(1) for text in texts for m in _REFERENCE_RE.finditer(text)}
    for arg in af.args:
        if arg.name not in used:
            yield arg.pos, (f"ARG {arg.name} is never used (no ${arg.name} or ${{{arg.name}}} "
                            "in a script, ENV or LABEL)")
    for svc in af.services:     # a service's ARG is seen by that service only
        own = [e.value for e in svc.envs] + [s.text for s in svc.inits + svc.updates]
        own += [p for c in svc.copies for p in (*c.sources, c.dest)] + list(svc.packages)
        used_here = {m.group(1) for text in own for m in _REFERENCE_RE.finditer(text)}
        for arg in svc.args:
            if arg.name not in used_here:
                yield arg.pos, (f"ARG {arg.name} of '{svc.name}' is never used (no "
                                f"${arg.name} or ${{{arg.name}}} in that service's scripts, ENV "
                                "or COPY)")


def _baked(ctx: Context) -> list[str]:
    """Names of the services baked by default: ENABLE (or every service declared here),
    with their requirements (one walk for all of them)."""
    af = ctx.amifile
    roots = [r.name for r in af.enables] if af.enables else [s.name for s in af.services]
    return ctx.required_by_any(roots)


def layer_order(ctx: Context) -> list[str]:
    """The baked services in layer order: topological, ties broken by declaration order
    (Kahn's algorithm with a heap: n log n, not a rescan per placed service)."""
    known = ctx.services()
    baked = set(_baked(ctx))
    declared = [n for n in [*ctx.external, *(s.name for s in ctx.amifile.services)]
                if n in baked]
    declared = list(dict.fromkeys(declared))
    index = {n: k for k, n in enumerate(declared)}
    waiting: dict[str, int] = {}
    dependents: dict[str, list[str]] = {n: [] for n in declared}
    for n in declared:
        deps = {r.name for r in known[n].requires if r.name in index and r.name != n}
        waiting[n] = len(deps)
        for dep in deps:
            dependents[dep].append(n)
    ready = [index[n] for n in declared if not waiting[n]]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        name = declared[heapq.heappop(ready)]
        order.append(name)
        for later in dependents[name]:
            waiting[later] -= 1
            if not waiting[later]:
                heapq.heappush(ready, index[later])
    if len(order) < len(declared):  # a cycle: reported by AM4002; finish in declaration order
        placed = set(order)
        order += [n for n in declared if n not in placed]
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


def _heavy(ctx: Context, svc: ir.Service) -> str | None:
    """Why a service's init layer is slow to rebuild, or ``None``."""
    if svc.packages:
        return f"installs {len(svc.packages)} package(s)"
    for script in svc.inits:
        for cmd in ctx.commands(script):
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


def _first_tree_copy(ctx: Context, svc: ir.Service) -> tuple[ir.Copy, str] | None:
    return next(((c, t) for c in svc.copies if (t := _tree_copy(ctx, c))), None)


def check_cache_busting_copy(ctx: Context) -> Found:
    order = layer_order(ctx)
    known = ctx.services()
    own = {s.name for s in ctx.amifile.services}
    trees = []
    for k, name in enumerate(order):
        tree = _first_tree_copy(ctx, known[name]) if name in own else None
        if tree:
            trees.append((k, name, tree))
    if not trees:
        return
    # The first heavy service after each position, found in one backward pass.
    next_heavy: list[tuple[str, str] | None] = [None] * (len(order) + 1)
    for k in range(len(order) - 1, -1, -1):
        why = _heavy(ctx, known[order[k]])
        next_heavy[k] = (order[k], why) if why else next_heavy[k + 1]
    for k, name, (copy, source) in trees:
        found = next_heavy[k + 1]
        if found is None:
            continue
        later, why = found
        depends = ctx.reaches(later, name)
        fix = (f"move the COPY into a service that requires {later!r}" if depends else
               f"declare {later!r} before {name!r} or make {name!r} require it")
        yield copy.pos, (
            f"COPY {source} in {name!r} comes before {later!r} (which {why}) in the layer "
            f"order: every change under {source} rebuilds {later!r} too; {fix}")
