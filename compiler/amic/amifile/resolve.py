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
import heapq
import os
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from pathlib import Path

import attrs

from amic import gcpause
from amic.amifile import ir
from amic.diagnostics import MAX_SHOWN
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
            requires = by_name[name].requires
            if requires:   # most services require nothing: no generator made for them
                stack.extend([r.name for r in requires])
        if len(wanted) == len(by_name):   # every service (no ENABLE): no test per name
            return tuple(by_name)
        return tuple(s.name for s in self.services if s.name in wanted)


Loader = Callable[[str], ir.Amifile]


def load(path: str | os.PathLike[str]) -> Resolved:
    """Parse ``path`` (a directory means its Amifile) and everything it includes, and
    resolve the service graph."""
    from amic.amifile import parser

    try:
        root = parser.parse_file(parser.amifile_path(path))
    except AmifileError as exc:
        if exc.recovered is None:
            raise
        try:   # the graph of what parsed: its errors in the same run
            resolve_amifile(exc.recovered, loader=parser.parse_file)
        except AmifileError as graph:
            raise exc.joined(graph) from None
        raise
    return resolve_amifile(root, loader=parser.parse_file)


def resolve_amifile(root: ir.Amifile, *, loader: Loader | None = None) -> Resolved:
    """Resolve an already parsed Amifile (``loader`` parses included files).

    The cyclic garbage collector is paused meanwhile, as while parsing: the graph's
    dicts and sets make no cycles, and the full passes they set off walk the whole IR.
    """
    with gcpause.paused():
        return _resolve(root, loader)


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
    # Every independent mistake of the service graph at once, in file order per kind.
    problems = [*_duplicates(services), *_graph_errors(services),
                *_enable_errors(root, services)]
    if problems:   # in file order, as lint lists them
        problems.sort(key=lambda p: (p.pos.file, p.pos.line, p.pos.col))
        known = sorted({s.name for s in services})
        raise AmifileError.collected([p.error(known, full=k < MAX_SHOWN)
                                      for k, p in enumerate(problems)])
    ordered = _topological(services)
    enabled = [r.name for r in root.enables] if root.enables else [s.name for s in root.services]
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


@attrs.frozen
class _Problem:
    """A mistake in the service graph, made into an error only when it is reported: the
    source line (a read of the file) and the suggestion (a search of every name) are found
    for the errors that are shown, so ten thousand mistakes cost no more than twenty."""

    pos: Pos
    message: str
    unknown: str | None = None
    """A name that is no service: the error suggests a close one."""

    def error(self, known: list[str], *, full: bool) -> AmifileError:
        if not full:
            return AmifileError(self.message, self.pos)
        message = self.message
        if self.unknown is not None:
            close = difflib.get_close_matches(self.unknown, known, n=1)
            message += f"; did you mean {close[0]!r}?" if close else ""
        return AmifileError(message, self.pos, source_line=source_line(self.pos))


def _duplicates(services: list[ir.Service]) -> Iterator[_Problem]:
    first: dict[str, ir.Service] = {}
    for svc in services:
        if svc.name in first:
            yield _Problem(svc.pos, f"service {svc.name!r} is defined twice (first at "
                           f"{first[svc.name].pos})")
        else:
            first[svc.name] = svc


def _graph_errors(services: list[ir.Service]) -> Iterator[_Problem]:
    """Unknown and self requirements, then every REQUIRES cycle."""
    known = {s.name for s in services}
    for svc in services:
        for req in svc.requires:
            if req.name not in known:
                yield _Problem(req.pos, f"service {svc.name!r} requires unknown service "
                               f"{req.name!r}", unknown=req.name)
            elif req.name == svc.name:
                yield _Problem(req.pos, f"service {svc.name!r} requires itself: {svc.name} -> "
                               f"{svc.name}")
    yield from _cycles(services)


def _topological(services: list[ir.Service]) -> list[ir.Service]:
    """Dependency order of a graph :func:`_graph_errors` found nothing wrong with."""
    index = {s.name: i for i, s in enumerate(services)}
    # Kahn's algorithm; the heap hands out the earliest-declared ready service. Only the
    # services that require something wait, and only those required have dependents (in a
    # large Amifile most services are neither).
    waiting = {s.name: {r.name for r in s.requires} for s in services if s.requires}
    dependents: dict[str, list[str]] = {}
    for s in services:
        for r in s.requires:
            dependents.setdefault(r.name, []).append(s.name)
    # Those ready from the start are in declaration order already: they are taken in turn
    # and only the ones that become ready later go through the heap (most services of a
    # large Amifile never do).
    ready = [i for i, s in enumerate(services) if not s.requires]
    later: list[int] = []   # a heap
    order: list[ir.Service] = []
    k, n = 0, len(ready)
    while k < n or later:
        if later and (k >= n or later[0] < ready[k]):
            svc = services[heapq.heappop(later)]
        else:
            svc = services[ready[k]]
            k += 1
        order.append(svc)
        for dep in dependents.get(svc.name, ()):
            waiting[dep].discard(svc.name)
            if not waiting[dep]:
                heapq.heappush(later, index[dep])
    return order


def _cycles(services: list[ir.Service]) -> Iterator[_Problem]:
    """One error per REQUIRES cycle (depth first, iterative: any chain length works).

    Placed where ``amic lint`` places AM4002: at the requirement by which the cycle's first
    service (in the search) enters it, not at the one that closes it.
    """
    by_name = {s.name: s for s in services}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for svc in services:
        if not svc.requires or svc.name in state:   # on no cycle, or searched already
            continue
        state[svc.name] = 1
        path = [svc.name]
        on_path = {svc.name: 0}
        stack: list[tuple[str, int]] = [(svc.name, 0)]   # (service, next requirement)
        while stack:
            name, i = stack[-1]
            reqs = by_name[name].requires
            if i >= len(reqs):
                stack.pop()
                del on_path[path.pop()]
                state[name] = 2
                continue
            stack[-1] = (name, i + 1)
            req = reqs[i]
            if req.name not in by_name or req.name == name:
                continue   # reported as unknown, or as requiring itself
            seen = state.get(req.name)
            if seen == 1:
                start = on_path[req.name]
                entered = by_name[req.name].requires[stack[start][1] - 1]
                chain = _chain([*path[start:], req.name])
                yield _Problem(entered.pos, f"REQUIRES cycle: {chain}")
            elif seen is None:
                state[req.name] = 1
                on_path[req.name] = len(path)
                path.append(req.name)
                stack.append((req.name, 0))


def _enable_errors(root: ir.Amifile, services: list[ir.Service]) -> Iterator[_Problem]:
    known = {s.name for s in services}
    for req in root.enables:
        if req.name not in known:
            yield _Problem(req.pos, f"ENABLE names unknown service {req.name!r}",
                           unknown=req.name)


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
