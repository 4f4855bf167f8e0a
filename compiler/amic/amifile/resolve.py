"""INCLUDE, the REQUIRES graph and the order services run in.

Input: the root Amifile (parsed by ``amic.amifile.parser``). Output: a
:class:`Resolved` value with every service from every included file, in
topological order with ties broken by declaration order, and the set of
services the image enables by default. All mistakes are ``AmifileError`` with
the position of the instruction that caused them and, for graph problems, the
chain (``web -> httpd -> web``).
"""

from __future__ import annotations

import difflib
import gc
import heapq
import os
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from pathlib import Path

import attrs

from amic.amifile import ir
from amic.errors import AmifileError, Pos

STOCK_FILE = "Amifile"
"""A stock service is a directory ``services/<name>/`` holding an ``Amifile``
(and any files its COPY instructions use)."""


@attrs.frozen
class Resolved:
    """The whole build input after INCLUDE and REQUIRES resolution."""

    root: ir.Amifile
    """The top Amifile as parsed."""
    services: tuple[ir.Service, ...] = attrs.field(converter=tuple)
    """Every service, dependency order (ties: declaration order, includes first)."""
    enabled: tuple[str, ...] = attrs.field(converter=tuple)
    """Services baked and run by default, with their dependencies, in dependency order."""
    args: tuple[ir.Arg, ...] = attrs.field(converter=tuple)
    envs: tuple[ir.Env, ...] = attrs.field(converter=tuple)
    files: tuple[str, ...] = attrs.field(converter=tuple)
    """Every Amifile read, root first."""
    secrets: tuple[ir.Secret, ...] = attrs.field(converter=tuple, default=())
    """Global SECRETs of every file read (included files first), each name once."""

    @property
    def base(self) -> ir.BaseImage | None:
        return self.root.base

    @property
    def labels(self) -> tuple[ir.Label, ...]:
        return self.root.labels

    @property
    def name(self) -> str | None:
        """``NAME`` of the top Amifile, as written."""
        return self.root.name.value if self.root.name else None

    def service(self, name: str) -> ir.Service:
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(name)

    def closure(self, names: Iterable[str]) -> tuple[str, ...]:
        """``names`` plus everything they require, in dependency order."""
        by_name = {s.name: s for s in self.services}
        wanted: set[str] = set()
        stack = list(names)
        while stack:
            name = stack.pop()
            if name in wanted:
                continue
            wanted.add(name)
            stack.extend(r.name for r in by_name[name].requires)
        return tuple(s.name for s in self.services if s.name in wanted)


Loader = Callable[[str], ir.Amifile]


def load(path: str | os.PathLike[str]) -> Resolved:
    """Parse ``path`` (a directory means its Amifile) and everything it includes, and
    resolve the service graph."""
    from amic.amifile import parser

    return resolve_amifile(parser.parse_file(parser.amifile_path(path)), loader=parser.parse_file)


def resolve_amifile(root: ir.Amifile, *, loader: Loader | None = None) -> Resolved:
    """Resolve an already parsed Amifile (``loader`` parses included files).

    The cyclic garbage collector is paused meanwhile, as while parsing: the graph's
    dicts and sets make no cycles, and the full passes they set off walk the whole IR.
    """
    paused = gc.isenabled()
    gc.disable()
    try:
        return _resolve(root, loader)
    finally:
        if paused:
            gc.enable()


def _resolve(root: ir.Amifile, loader: Loader | None) -> Resolved:
    if loader is None:
        from amic.amifile import parser

        loader = parser.parse_file
    files: list[str] = [root.path]
    services: list[ir.Service] = []
    args: list[ir.Arg] = []
    envs: list[ir.Env] = []
    secrets: list[ir.Secret] = []
    _collect(root, loader, files=files, services=services, args=args, envs=envs,
             secrets=secrets)
    _check_duplicates(services)
    ordered = _topological(services)
    enabled = _enabled(root, ordered)
    unique_secrets: list[ir.Secret] = []
    named: set[str] = set()
    for secret in secrets:   # the first declaration of a name stands
        if secret.name not in named:
            named.add(secret.name)
            unique_secrets.append(secret)
    resolved = Resolved(root=root, services=ordered, enabled=(), args=_dedupe_args(args),
                        envs=_dedupe_envs(envs), files=files, secrets=unique_secrets)
    return attrs.evolve(resolved, enabled=resolved.closure(enabled))


def _identity(path: str) -> str:
    return os.path.realpath(path)


def _collect(root: ir.Amifile, loader: Loader, *, files: list[str], services: list[ir.Service],
             args: list[ir.Arg], envs: list[ir.Env], secrets: list[ir.Secret]) -> None:
    """Every file's ARGs, ENVs and services, included files first (depth first, in order).

    Iterative (an explicit stack of open files), so any INCLUDE depth works.
    """
    seen = {_identity(root.path)}
    frames: list[tuple[ir.Amifile, str, Iterator[ir.Include]]] = [
        (root, _identity(root.path), iter(root.includes))]
    on_path = {frames[0][1]}
    while frames:
        amifile, ident, pending = frames[-1]
        inc = next(pending, None)
        if inc is None:
            frames.pop()
            on_path.discard(ident)
            args.extend(amifile.args)
            envs.extend(amifile.envs)
            secrets.extend(amifile.secrets)
            services.extend(amifile.services)
            continue
        path = find_include(inc, amifile.path)
        child_ident = _identity(path)
        if child_ident in on_path:
            chain = _chain([*(_short(f[1]) for f in frames), _short(child_ident)])
            raise AmifileError(f"INCLUDE cycle: {chain}", inc.pos, source_line=source_line(inc.pos))
        if child_ident in seen:
            continue  # a second INCLUDE of the same file adds nothing
        seen.add(child_ident)
        files.append(path)
        try:
            child = loader(path)
        except OSError as exc:
            raise AmifileError(f"cannot read included file {path}: {exc.strerror}", inc.pos,
                               source_line=source_line(inc.pos)) from None
        _check_included(child)
        frames.append((child, child_ident, iter(child.includes)))
        on_path.add(child_ident)


def _check_included(amifile: ir.Amifile) -> None:
    for what, node in (("FROM", amifile.base), ("ENABLE", next(iter(amifile.enables), None)),
                       ("LABEL", next(iter(amifile.labels), None)), ("NAME", amifile.name)):
        if node is not None:
            raise AmifileError(f"{what} is only allowed in the top Amifile, not in an included file",
                               node.pos, source_line=source_line(node.pos))


def _chain(names: list[str], most: int = 16) -> str:
    """``a -> b -> a``; a long chain shows its ends only (error text stays bounded)."""
    if len(names) > most:
        left = len(names) - most
        names = [*names[:most // 2], f"... {left} more ...", *names[-(most // 2):]]
    return " -> ".join(names)


def _short(path: str) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return path


def stock_service_dirs() -> list[Path]:
    """Where ``INCLUDE name`` looks: ``$AMIC_SERVICES_PATH`` (colon-separated) first, then amic's own."""
    dirs = [Path(p) for p in os.environ.get("AMIC_SERVICES_PATH", "").split(":") if p]
    dirs.append(Path(str(resources.files("amic._services"))))
    return dirs


def stock_service_names() -> list[str]:
    names: set[str] = set()
    for d in stock_service_dirs():
        if d.is_dir():
            names.update(p.parent.name for p in d.glob(f"*/{STOCK_FILE}"))
    return sorted(names)


def find_include(inc: ir.Include, including_file: str) -> str:
    """Path of the file ``INCLUDE ref`` names.

    A bare name (``httpd``) is a stock service; anything with a ``/`` or a
    dot-prefix is a path relative to the including file (a directory means
    its ``Amifile``).
    """
    ref = inc.ref
    if ir.SERVICE_NAME_RE.match(ref):
        for d in stock_service_dirs():
            candidate = d / ref / STOCK_FILE
            if candidate.is_file():
                return str(candidate)
        hint = difflib.get_close_matches(ref, stock_service_names(), n=1)
        extra = f"; did you mean {hint[0]!r}?" if hint else \
            f"; stock services: {', '.join(stock_service_names()) or 'none'}"
        raise AmifileError(f"no stock service named {ref!r}{extra}", inc.pos,
                           source_line=source_line(inc.pos),
                           hint="to include a file, write a path such as ./services/web.amifile")
    base = Path(including_file).parent
    target = (base / ref) if not os.path.isabs(ref) else Path(ref)
    if target.is_dir():
        target = target / STOCK_FILE
    if target.exists() and not target.is_file():
        from amic.amifile.parser import amifile_path

        try:
            amifile_path(target)
        except AmifileError as exc:  # a FIFO, a device, a socket: never opened
            raise AmifileError(f"INCLUDE {ref}: {exc.message}", inc.pos,
                               source_line=source_line(inc.pos)) from None
    if not target.is_file():
        raise AmifileError(f"INCLUDE {ref}: no such file ({target})", inc.pos,
                           source_line=source_line(inc.pos))
    return os.path.normpath(str(target))


def _check_duplicates(services: list[ir.Service]) -> None:
    first: dict[str, ir.Service] = {}
    for svc in services:
        if svc.name in first:
            raise AmifileError(f"service {svc.name!r} is defined twice (first at {first[svc.name].pos})",
                               svc.pos, source_line=source_line(svc.pos))
        first[svc.name] = svc


def _topological(services: list[ir.Service]) -> list[ir.Service]:
    index = {s.name: i for i, s in enumerate(services)}
    for svc in services:
        for req in svc.requires:
            if req.name not in index:
                close = difflib.get_close_matches(req.name, list(index), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise AmifileError(f"service {svc.name!r} requires unknown service {req.name!r}{hint}",
                                   req.pos, source_line=source_line(req.pos))
            if req.name == svc.name:
                raise AmifileError(f"service {svc.name!r} requires itself: {svc.name} -> {svc.name}",
                                   req.pos, source_line=source_line(req.pos))
    _find_cycle(services, index)
    # Kahn's algorithm; the heap hands out the earliest-declared ready service.
    waiting = {s.name: {r.name for r in s.requires} for s in services}
    dependents: dict[str, list[str]] = {s.name: [] for s in services}
    for s in services:
        for r in s.requires:
            dependents[r.name].append(s.name)
    ready = [index[n] for n, deps in waiting.items() if not deps]
    heapq.heapify(ready)
    order: list[ir.Service] = []
    while ready:
        svc = services[heapq.heappop(ready)]
        order.append(svc)
        for dep in dependents[svc.name]:
            waiting[dep].discard(svc.name)
            if not waiting[dep]:
                heapq.heappush(ready, index[dep])
    return order


def _find_cycle(services: list[ir.Service], index: dict[str, int]) -> None:
    """Raise at the first REQUIRES cycle (depth first, iterative: any chain length works)."""
    by_name = {s.name: s for s in services}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for svc in services:
        if svc.name in state:
            continue
        state[svc.name] = 1
        path = [svc.name]
        pending = [iter(svc.requires)]
        while pending:
            req = next(pending[-1], None)
            if req is None:
                pending.pop()
                state[path.pop()] = 2
                continue
            seen = state.get(req.name)
            if seen == 1:
                chain = _chain([*path[path.index(req.name):], req.name])
                raise AmifileError(f"REQUIRES cycle: {chain}", req.pos,
                                   source_line=source_line(req.pos))
            if seen is None:
                state[req.name] = 1
                path.append(req.name)
                pending.append(iter(by_name[req.name].requires))


def _enabled(root: ir.Amifile, ordered: list[ir.Service]) -> list[str]:
    known = {s.name for s in ordered}
    if root.enables:
        for req in root.enables:
            if req.name not in known:
                close = difflib.get_close_matches(req.name, sorted(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise AmifileError(f"ENABLE names unknown service {req.name!r}{hint}", req.pos,
                                   source_line=source_line(req.pos))
        return [r.name for r in root.enables]
    return [s.name for s in root.services]


def _dedupe_args(args: list[ir.Arg]) -> list[ir.Arg]:
    seen: dict[str, ir.Arg] = {}
    for arg in args:
        prev = seen.get(arg.name)
        if prev is not None and prev.default != arg.default and arg.default is not None \
                and prev.default is not None:
            raise AmifileError(f"ARG {arg.name} declared again with another default "
                               f"(first at {prev.pos})", arg.pos, source_line=source_line(arg.pos))
        if prev is None or prev.default is None:
            seen[arg.name] = arg
    return list(seen.values())


def _dedupe_envs(envs: list[ir.Env]) -> list[ir.Env]:
    # Later ENV of the same name wins, as in a shell; the position kept is the winner's.
    last: dict[str, ir.Env] = {}
    for env in envs:
        last.pop(env.name, None)
        last[env.name] = env
    return list(last.values())


def source_line(pos: Pos) -> str | None:
    """The source line at ``pos`` (for the caret display), or None if unreadable."""
    try:
        with open(pos.file, encoding="utf-8", errors="replace", newline="") as fh:
            for n, line in enumerate(fh, 1):
                if n == pos.line:
                    return line.rstrip("\r\n")
    except OSError:
        return None
    return None
