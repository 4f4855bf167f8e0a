"""From a resolved Amifile to layers with cache keys.

One layer per baked service init. A layer's key chains its parent's key, the
runtime's content hash and everything that can change what the layer's init
does: packages, COPY contents, modes and destinations, INIT text, the ENV
values it sees and the ARG values it sees: every global ARG, and the ARGs of its
own SERVICE block (so changing one re-runs that layer and the ones chained after
it, nothing before). SECRET values are in no key: rotating one re-runs nothing.
Keys come from values, never from
source positions or formatting, so moving or re-indenting instructions or
editing comments outside scripts keeps every key. UPDATE scripts only enter
the final key: changing them re-bakes the artifact on top of cached layers.

Each layer also keeps the digest of every input by name, so a build can say
*why* a layer missed the cache ("init changed", "parent changed").
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from importlib import resources

import attrs

from amic import gcpause
from amic import __version__

from amic.amifile import ir
from amic.amifile.resolve import Resolved
from amic.compile.context import Contexts, CopyPlan, expand_copy
from amic.compile.packages import check_packages

KEY_SCHEME = "amic-key-v1"
"""Bumped whenever what goes into a key changes, so old caches are not misread."""


_JSON = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))
"""``json.dumps`` with these options, made once: a plan hashes twice per service."""


def _digest(*parts: object) -> str:
    return _hash(_JSON.encode(parts))


def _hash(blob: str) -> str:
    # surrogatepass: a file name that is not UTF-8 (os.fsdecode's lone surrogates) hashes
    # as itself, distinct from every UTF-8 name, where strict UTF-8 raised
    return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()


_STRING = json.encoder.encode_basestring
"""A str as ``_JSON`` writes it (``ensure_ascii=False``): for the blobs built by hand below."""


def _own_blob(name: str, rest: str) -> str:
    """``_JSON.encode((KEY_SCHEME, name, *others))`` where ``rest`` is
    ``_JSON.encode(others)`` with its ``[``: the blob of a service's own hash. The part after
    the name is the same for most services (and made once); the test suite checks the two
    agree."""
    return f'["{KEY_SCHEME}",{_STRING(name)},{rest[1:]}'


def _layer_parts(own_inputs: Mapping[str, str], args_digest: str) -> tuple[str, str]:
    """What comes before and after the parent key in the blob :func:`_layer_blob` makes;
    the same for every service with the same other inputs (made once for them)."""
    i = own_inputs
    return (f'{{"args":"{i["args"]}","copy":"{i["copy"]}","env":"{i["env"]}",'
            f'"init":"{i["init"]}","packages":"{i["packages"]}","parent":"',
            f'","runtime":"{i["runtime"]}"}},"{args_digest}"]')


def _layer_blob(name: str, parent: str, parts: tuple[str, str]) -> str:
    """``_JSON.encode((KEY_SCHEME, "layer", name, inputs, args_digest))`` for a service with
    no ARG of its own, ``inputs`` holding hex digests under the seven names (sorted, as
    ``sort_keys`` does; ``parts`` from :func:`_layer_parts`)."""
    return f'["{KEY_SCHEME}","layer",{_STRING(name)},{parts[0]}{parent}{parts[1]}'


@attrs.frozen
class Layer:
    """The init of one baked service."""

    service: str
    key: str
    parent_key: str
    own_inputs: Mapping[str, str] = attrs.field(repr=False)
    """:attr:`inputs` but the parent: one mapping shared by every layer with the same
    digests (most of a large Amifile's), not a dict of seven per layer."""

    @property
    def inputs(self) -> dict[str, str]:
        """Digest per input name: parent, runtime, packages, copy, init, env, args (the ARG
        names and which are missing; their values enter ``key`` only, never an input)."""
        return {"parent": self.parent_key, **self.own_inputs}


@attrs.frozen
class ServicePlan:
    """Everything the artifact needs to hold for one service."""

    service: ir.Service
    packages: tuple[str, ...]
    """Sorted, duplicates and packages already installed by a requirement removed."""
    copies: tuple[CopyPlan, ...]
    envs: tuple[ir.Env, ...]
    """Global ENV then the service's own (later wins in the shell)."""
    own_hash: str
    """Digest of this service's own init inputs (what the runtime records on a machine)."""

    @property
    def name(self) -> str:
        return self.service.name


@attrs.frozen
class Plan:
    """What to build, in order, with cache keys."""

    resolved: Resolved
    services: tuple[ServicePlan, ...] = attrs.field(converter=tuple)
    """Every service, dependency order."""
    enabled: tuple[str, ...] = attrs.field(converter=tuple)
    layers: tuple[Layer, ...] = attrs.field(converter=tuple)
    """One per enabled service, dependency order."""
    final_key: str
    runtime_hash: str
    base_key: str
    """Parent key of the first layer: the base reference and, in a build, the resolved image id."""
    arg_values: Mapping[str, str] = attrs.field(converter=dict, repr=False)
    """Values of the global ARGs for this build. Passed to the machine at run time; never
    written anywhere."""
    missing_args: tuple[str, ...] = attrs.field(converter=tuple)
    """ARGs with neither a value nor a default (global ones, then those of baked services)."""
    service_arg_values: Mapping[str, Mapping[str, str]] = attrs.field(
        converter=dict, repr=False, factory=dict)
    """Values of each baked service's own ARGs (only services that declare some)."""
    _by_name: Mapping[str, tuple[ServicePlan, Layer | None]] = attrs.field(
        init=False, repr=False, eq=False)
    """Each service's plan and layer by name: :meth:`service` and :meth:`layer` are called
    once per service (the artifact, the build), so a scan there made them quadratic."""

    _global_secrets: tuple[str, ...] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        layers = {layer.service: layer for layer in self.layers}
        object.__setattr__(self, "_by_name",
                           {sp.service.name: (sp, layers.get(sp.service.name))
                            for sp in self.services})
        object.__setattr__(self, "_global_secrets",
                           tuple(dict.fromkeys(s.name for s in self.resolved.secrets)))

    @property
    def declared_args(self) -> tuple[ir.Arg, ...]:
        """Every ARG: the global ones, then each service's own."""
        return (*self.resolved.args, *(a for sp in self.services for a in sp.service.args))

    def layer_env(self, service: str) -> dict[str, str]:
        """The ARG values ``service``'s INIT sees: the global ones, then its own."""
        return {**self.arg_values, **self.service_arg_values.get(service, {})}

    def secret_names(self, service: str | None = None) -> tuple[str, ...]:
        """SECRET names given to ``service``'s INIT: the global ones and its own (None: all)."""
        # Global SECRETs of INCLUDEd files too, once resolve collects them (as it does ARGs)
        found = self._by_name.get(service) if service is not None else None
        if found is not None and not found[0].service.secrets:   # asked once per layer
            return self._global_secrets
        names = [s.name for s in self.resolved.secrets]
        chosen = self.services if service is None else \
            [self._by_name[service][0]] if service in self._by_name else []
        for sp in chosen:
            names.extend(s.name for s in sp.service.secrets)
        return tuple(dict.fromkeys(names))

    @property
    def base_ref(self) -> str | None:
        return self.resolved.base.ref if self.resolved.base else None

    @property
    def labels(self) -> dict[str, str]:
        return {label.key: label.value for label in self.resolved.labels}

    @property
    def amifile_path(self) -> str:
        return self.resolved.root.path

    def service(self, name: str) -> ServicePlan:
        return self._by_name[name][0]

    def layer(self, service: str) -> Layer | None:
        found = self._by_name.get(service)
        return found[1] if found else None

    def to_json(self) -> dict:
        """The plan as printed by ``amic compile --json`` (stable field names)."""
        enabled = set(self.enabled)
        return {
            "amifile": self.amifile_path,
            "base": self.base_ref,
            "runtime_hash": self.runtime_hash,
            "services": [
                {"name": sp.name, "requires": [r.name for r in sp.service.requires],
                 "enabled": sp.name in enabled, "hash": sp.own_hash,
                 "source": f"{sp.service.pos.file}:{sp.service.pos.line}"}
                for sp in self.services],
            "layers": [{"service": layer.service, "key": layer.key, "parent": layer.parent_key,
                        "inputs": dict(layer.inputs)} for layer in self.layers],
            "final_key": self.final_key,
            "args": list(dict.fromkeys(a.name for a in self.declared_args)),
            "missing_args": list(self.missing_args),
            "secrets": list(self.secret_names()),   # names only: values never reach a plan
        }


def arg_values(resolved: Resolved, build_args: Mapping[str, str],
               environ: Mapping[str, str] | None = None) -> tuple[dict[str, str], list[str]]:
    """Values for each ARG: ``--build-arg`` first, then the environment, then the default."""
    return _values(resolved.args, build_args, os.environ if environ is None else environ)


def _values(args: tuple[ir.Arg, ...], build_args: Mapping[str, str],
            environ: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    values: dict[str, str] = {}
    missing: list[str] = []
    for arg in args:
        if arg.name in build_args:
            values[arg.name] = build_args[arg.name]
        elif arg.name in environ:
            values[arg.name] = environ[arg.name]
        elif arg.default is not None:
            values[arg.name] = arg.default
        else:
            missing.append(arg.name)
    return values, missing


def make_plan(resolved: Resolved, build_args: Mapping[str, str] | None = None, *,
              base_image_id: str | None = None, environ: Mapping[str, str] | None = None,
              context: str | None = None, copy_limit: int | None = None) -> Plan:
    """Compute layers and keys. ``base_image_id`` (a build's resolved FROM) chains into every key.

    ``context``: the build context COPY reads from (default: the root Amifile's directory);
    ``copy_limit``: bytes all COPYs may read (default: ``$AMIC_COPY_LIMIT`` or 2 GiB).

    The cyclic garbage collector is paused meanwhile, as while parsing: a plan makes no
    cycles, and the full passes the new objects set off walk every service of the IR
    again (40% of a 325,000-service plan's time).
    """
    with gcpause.paused():
        return _make_plan(resolved, build_args, base_image_id=base_image_id, environ=environ,
                          context=context, copy_limit=copy_limit)


def _make_plan(resolved: Resolved, build_args: Mapping[str, str] | None, *,
               base_image_id: str | None, environ: Mapping[str, str] | None,
               context: str | None, copy_limit: int | None) -> Plan:
    contexts = Contexts(context if context is not None else os.path.dirname(resolved.root.path),
                        explicit=context is not None, limit=copy_limit)
    environ = os.environ if environ is None else environ
    values, missing = _values(resolved.args, build_args or {}, environ)
    runtime = runtime_hash()
    # The ARG values enter the keys only. The ``args`` input (the amic:in:args tag every
    # engineer of a team sees) names the ARGs and which have no value: a digest of a value
    # there would be a dictionary attack away from the value (docs/ec2.md "Tags").
    args_digest = _args_digest(values, missing)
    global_missing = sorted(missing)
    services, copies_digests = _service_plans(resolved, contexts)
    memo: dict[object, str] = {}
    no_copies = _copies_digest(())
    base_key = _digest(KEY_SCHEME, "base", resolved.base.ref if resolved.base else None, base_image_id)
    layers: list[Layer] = []
    parent = base_key
    enabled = set(resolved.enabled)   # a set: one lookup per service, not a scan
    service_values: dict[str, dict[str, str]] = {}
    no_args = {}   # _values of a service with no ARG of its own
    names_digest = _digest("arg-names", sorted(values), global_missing)
    # Most services share every input but the parent (no packages, COPY, INIT or ARG of
    # their own, the global ENV only): their mapping and the blob around the parent key
    # are made once (``shared``), a service costs one hash.
    shared: dict[tuple, tuple[dict[str, str], tuple[str, str]]] = {}
    global_envs = resolved.envs
    for sp in services:
        svc = sp.service
        name = svc.name   # not the property: this loop runs once per service
        if name not in enabled:
            continue
        copy = copies_digests.get(name, no_copies)
        if not (svc.args or svc.inits or sp.packages or svc.copies) and sp.envs is global_envs:
            common = shared.get(())
            if common is None:
                common = shared[()] = _shared(memo, runtime, (), no_copies, (), sp.envs,
                                              names_digest, args_digest)
            key = _hash(_layer_blob(name, parent, common[1]))
            layers.append(Layer(service=name, key=key, parent_key=parent, own_inputs=common[0]))
            parent = key
            continue
        # A service's own ARGs: in this key (and so in every key chained after it) only.
        if svc.args:
            own, own_missing = _values(svc.args, build_args or {}, environ)
            own_args = [sorted(own), sorted(own_missing)]
            service_values[name] = own
            missing.extend(own_missing)
            args_names = _digest("arg-names", sorted(values), global_missing, *own_args)
        else:
            own, own_missing, own_args, args_names = no_args, [], None, names_digest
        texts = tuple(s.text for s in svc.inits) if svc.inits else ()
        common = _shared(memo, runtime, sp.packages, copy, texts, sp.envs, args_names,
                         args_digest)
        if own_args:
            key = _digest(KEY_SCHEME, "layer", name, {"parent": parent, **common[0]},
                          args_digest, _args_digest(own, own_missing))
        else:
            key = _hash(_layer_blob(name, parent, common[1]))
        layers.append(Layer(service=name, key=key, parent_key=parent, own_inputs=common[0]))
        parent = key
    final_key = _final_key(resolved, services, parent, runtime, args_digest)
    return Plan(resolved=resolved, services=services, enabled=resolved.enabled, layers=layers,
                final_key=final_key, runtime_hash=runtime, base_key=base_key, arg_values=values,
                missing_args=missing, service_arg_values=service_values)


def _final_key(resolved: Resolved, services: Sequence[ServicePlan], parent: str, runtime: str,
               args_digest: str) -> str:
    """``_digest(KEY_SCHEME, "final", parent, runtime, enabled, [(name, UPDATE texts)...],
    [(name, own hash, requires)...], labels, args_digest)``, the JSON hashed as it is made,
    a few thousand services at a time: the lists of a 325,000-service plan and their JSON
    text took a hundred MB at once. The test suite checks it against ``_digest``."""
    h = hashlib.sha256()
    pieces = [f'["{KEY_SCHEME}","final",{_STRING(parent)},{_STRING(runtime)},'
              f'{_JSON.encode(list(resolved.enabled))},[']

    def flush() -> None:
        h.update("".join(pieces).encode("utf-8", "surrogatepass"))
        pieces.clear()

    for part in ("updates", "requires"):
        sep = ""
        for sp in services:
            svc = sp.service
            if part == "updates":
                rest = _JSON.encode([s.text for s in svc.updates]) if svc.updates else "[]"
            else:
                rest = (f'"{sp.own_hash}",'
                        + (_JSON.encode([r.name for r in svc.requires]) if svc.requires else "[]"))
            pieces.append(f"{sep}[{_STRING(svc.name)},{rest}]")
            sep = ","
            if len(pieces) >= 4096:
                flush()
        pieces.append("],[" if part == "updates" else "],")
    labels = sorted((label.key, label.value) for label in resolved.labels)
    pieces.append(f"{_JSON.encode(labels)},{_STRING(args_digest)}]")
    flush()
    return h.hexdigest()


def _service_plans(resolved: Resolved, contexts: Contexts
                   ) -> tuple[list[ServicePlan], dict[str, str]]:
    """Each service's plan, and the digest of its COPYs by name (those that have any)."""
    services: list[ServicePlan] = []
    copies_digests: dict[str, str] = {}
    no_copies = _copies_digest(())
    global_envs = tuple((e.name, e.value) for e in resolved.envs)
    rests: dict[object, str] = {}   # the blob of an own hash after the name, by its parts
    plain_rest = _JSON.encode([(), no_copies, [], [list(e) for e in global_envs]])
    for svc, own in zip(resolved.services, _own_packages(resolved.services)):
        if not (own or svc.copies or svc.inits or svc.envs):   # most of a large Amifile
            services.append(ServicePlan(service=svc, packages=own, copies=(),
                                        envs=resolved.envs,
                                        own_hash=_hash(_own_blob(svc.name, plain_rest))))
            continue
        copies = tuple(expand_copy(i, c, contexts) for i, c in enumerate(svc.copies, 1)) \
            if svc.copies else ()
        copy_digest = no_copies
        if copies:
            copies_digests[svc.name] = copy_digest = _copies_digest(copies)
        envs = (*resolved.envs, *svc.envs) if svc.envs else resolved.envs
        parts = (own, copy_digest, tuple(s.text for s in svc.inits) if svc.inits else (),
                 global_envs + tuple((e.name, e.value) for e in svc.envs) if svc.envs
                 else global_envs)
        rest = rests.get(parts)
        if rest is None:
            rest = rests[parts] = _JSON.encode([own, copy_digest, list(parts[2]),
                                                [list(e) for e in parts[3]]])
        services.append(ServicePlan(service=svc, packages=own, copies=copies, envs=envs,
                                    own_hash=_hash(_own_blob(svc.name, rest))))
    return services, copies_digests


def _shared(memo: dict[object, str], runtime: str, packages: tuple[str, ...], copy: str,
            inits: tuple[str, ...], envs: tuple[ir.Env, ...], args_names: str,
            args_digest: str) -> tuple[dict[str, str], tuple[str, str]]:
    """A layer's inputs but its parent, and :func:`_layer_parts` of them: each distinct
    value is hashed once (``memo``)."""
    pairs = tuple((e.name, e.value) for e in envs)
    inputs = {
        "runtime": runtime,
        "packages": _memo_digest(memo, ("packages", packages), lambda: _digest(packages)),
        "copy": copy,
        "init": _memo_digest(memo, ("init", inits), lambda: _digest(inits)),
        "env": _memo_digest(memo, ("env", pairs), lambda: _digest(pairs)),
        "args": args_names,
    }
    return inputs, _layer_parts(inputs, args_digest)


def _memo_digest(memo: dict[object, str], key: object, make: Callable[[], str]) -> str:
    found = memo.get(key)
    if found is None:
        found = memo[key] = make()
    return found


def _own_packages(services: Sequence[ir.Service]) -> Iterator[tuple[str, ...]]:
    """Each service's packages (in dependency order), sorted, without those a requirement
    (or its requirements) installs already.

    Linear in practice: only a package more than one service names can be inherited, so only
    those are carried down the graph, and a service that adds none shares its requirement's
    set instead of copying it (a 5,000-long REQUIRES chain of one package each copied 12.5
    million set entries and took 630 MB).
    """
    counts: dict[str, int] = {}
    for svc in services:
        for name in set(svc.packages):
            counts[name] = counts.get(name, 0) + 1
    empty: frozenset[str] = frozenset()
    below: dict[str, frozenset[str]] = {}   # the shared packages a service and its deps install
    for svc in services:
        if not (svc.packages or svc.requires):   # most services: nothing to inherit or add
            yield ()   # (and nothing in ``below``: absent is empty)
            continue
        check_packages(svc)
        sets = sorted({id(s): s for s in (below.get(r.name, empty) for r in svc.requires)}
                      .values(), key=len, reverse=True)
        inherited = sets[0] if sets else empty
        for other in sets[1:]:
            if not other <= inherited:
                inherited = inherited | other
        yield tuple(sorted(set(svc.packages) - inherited))
        shared = {name for name in svc.packages if counts[name] > 1}
        below[svc.name] = inherited if shared <= inherited else inherited | shared


def _args_digest(values: Mapping[str, str], missing: list[str]) -> str:
    return _digest(sorted((name, _arg_digest(name, value)) for name, value in values.items()),
                   sorted(missing))


def _arg_digest(name: str, value: str) -> str:
    # A keyed digest: the key shows that a value changed without storing it.
    # surrogatepass: a value from an environment that is not UTF-8 hashes, distinctly
    data = f"amic-arg\0{name}\0{value}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


def _copies_digest(copies: tuple[CopyPlan, ...]) -> str:
    return _digest([(c.dest, c.single, [(f.rel, f.mode, f.kind, f.digest) for f in c.files])
                    for c in copies])


def runtime_files() -> list[tuple[str, int, bytes]]:
    """The runtime shipped in every artifact: (relative path, mode, content), sorted."""
    root = resources.files("amic._runtime")
    out: list[tuple[str, int, bytes]] = []

    def walk(node, prefix: str) -> None:
        for child in node.iterdir():
            name = child.name
            if name in ("__init__.py", "__pycache__") or name.startswith("."):
                continue
            rel = f"{prefix}{name}"
            if child.is_dir():
                walk(child, rel + "/")
            else:
                executable = os.stat(str(child)).st_mode & 0o111 if hasattr(child, "__fspath__") \
                    else 0
                out.append((rel, 0o755 if executable or rel == "amic" else 0o644, child.read_bytes()))

    walk(root, "")
    return sorted(out)


@functools.lru_cache(maxsize=1)
def runtime_hash() -> str:
    """Content hash of the runtime (and amic's version): part of every cache key."""
    return _digest(__version__, [(rel, mode, hashlib.sha256(data).hexdigest())
                                 for rel, mode, data in runtime_files()])
