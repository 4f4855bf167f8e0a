"""``amic build --dry-run``: what the next build would do, without doing any of it.

The same steps as :func:`amic.engine.build.build` up to the point where a build
starts changing things: read the Amifile, resolve the base (read-only:
``Target.peek_base``), compute the plan with the same keys, look the final key
up, find the longest cached prefix, and say for each layer above it why it
would run (``explain.why_missed``, as the build does). No build lock, no lease,
no memo, no artifact, no machine: on ec2 only Describe* calls; on local nothing
is written to the store or the base cache (a base that is not bootstrapped yet
is reported as such, and every layer then runs).

What a dry run cannot know: whether a build of the same keys finishes first
(the real build then reuses it), and, in place (ssh), whether the host already
ran an init (the runner there skips it and the build says CACHED).

No SECRET value is needed (secrets are in no key): the report names the secrets
the layers that would run read, and which of them this run was not given (the
real build refuses to start without those).
"""

from __future__ import annotations

import contextlib

import attrs

from amic import gcpause
from amic.amifile import resolve
from amic.engine import build as engine
from amic.engine import buildinputs
from amic.engine import tags as imagetags
from amic.engine.checkpoint import fill_reason, missing_checkpoints
from amic.engine.explain import first_build, history_of, project_match, why_missed
from amic.engine.progress import Reporter, mask_secrets, short
from amic.errors import AmifileError, BaseRefError
from amic.targets import base as tb

NO_BASE_ID = "(not made yet)"


@attrs.frozen
class PlannedLayer:
    service: str
    key: str | None
    """None when the base does not exist yet (its id is part of every key)."""
    status: str
    """``CACHED`` or ``RUN``."""
    reason: str
    """Why it would run (as the build would say it), or where the cached copy is."""
    starts_from: str
    """RUN: the image the build's machine would be launched from (the first RUN layer) or
    ``after <service>`` (it runs on the same machine); CACHED: the image holding it."""


@attrs.frozen
class NeededSecret:
    name: str
    services: tuple[str, ...] = attrs.field(converter=tuple)
    """The services whose INIT would run and read it."""
    given: bool
    """Whether this run was given a value (the real build refuses to start without one)."""


@attrs.frozen
class DryRun:
    target: str
    amifile: str
    base: str | None
    """FROM as written (None: the target's default)."""
    base_image_id: str | None
    """None: resolving the base would make it (local: debootstrap)."""
    final_key: str | None
    final_image_id: str | None
    """The final image if it exists (then nothing would run, but the checkpoints an explicit
    ``--checkpoint`` asks for that are missing)."""
    launch_from: str | None
    """The image a build would start its machine from; None if nothing would run."""
    layers: tuple[PlannedLayer, ...] = attrs.field(converter=tuple)
    secrets: tuple[NeededSecret, ...] = attrs.field(default=(), converter=tuple)
    """The SECRETs the layers that would run read (a dry run needs none of their values)."""

    @property
    def would_run(self) -> list[str]:
        return [layer.service for layer in self.layers if layer.status == "RUN"]

    def to_json(self) -> dict:
        return {"dry_run": True, "target": self.target, "amifile": self.amifile,
                "base": self.base, "base_image_id": self.base_image_id,
                "final_key": self.final_key,
                "final": {"exists": self.final_image_id is not None,
                          "image_id": self.final_image_id},
                "launch_from": self.launch_from,
                "layers": [attrs.asdict(layer) for layer in self.layers],
                "secrets": [{"name": s.name, "services": list(s.services), "given": s.given}
                            for s in self.secrets]}

    def secret_lines(self) -> list[str]:
        """Which secrets the build would need, by name, and which this run was not given."""
        if not self.secrets:
            return []
        lines = ["secrets the build would need: " + "; ".join(
            f"{s.name} (by {', '.join(s.services)})" for s in self.secrets)]
        missing = [s.name for s in self.secrets if not s.given]
        if missing:
            lines.append(f"not given here (the build would refuse without them): "
                         f"{', '.join(missing)}; give each with --secret id={missing[0]},src=FILE, "
                         f"--secret id={missing[0]},env=VAR or --secret {missing[0]}")
        return lines

    def text(self) -> str:
        """The report on stderr: a line per layer as a build prints them, then the final."""
        base = self.base_image_id and short(self.base_image_id)
        lines = [f"base {self.base or '(target default)'}: "
                 + (base or "not made yet (a build would make it first)")]
        n = len(self.layers)
        for i, layer in enumerate(self.layers, 1):
            start = layer.starts_from
            shown = short(start) if not start.startswith("after ") else start
            lines.append(f"[{i}/{n}] {layer.service:<16} {layer.status:<6}  {layer.reason}"
                         f"  (from {shown})")
        lines += self.secret_lines()
        key = self.final_key[:12] if self.final_key else "?"
        if self.final_image_id and self.would_run:
            lines.append(f"final image {short(self.final_image_id)} exists (final key {key}): "
                         f"a build would launch from {short(self.launch_from or '?')} to make "
                         f"the missing checkpoints ({', '.join(self.would_run)})")
        elif self.final_image_id:
            lines.append(f"final image {short(self.final_image_id)} exists (final key {key}): "
                         "a build would change nothing")
        else:
            ran = self.would_run
            lines.append(f"final image (key {key}) does not exist: a build would launch from "
                         f"{short(self.launch_from or '?')} and run "
                         + (f"{len(ran)} of {n} layers ({', '.join(ran)})" if ran
                            else "no init (a new stage2 on the cached layers)"))
        return "\n".join(lines)


def _fill(b: engine.BuildState, common: dict, final: tb.Image, missing: list[int]) -> DryRun:
    """A cached final image whose asked checkpoints (``missing``) a build would make first."""
    p = b.plan
    start, reports = engine.find_prefix(b, below=missing[0])
    layers = [PlannedLayer(r.service, r.key, r.status, r.reason, start.id) for r in reports]
    for i in range(len(reports), missing[-1] + 1):
        layers.append(PlannedLayer(p.layers[i].service, p.layers[i].key, "RUN",
                                   fill_reason(i, missing, b.options.checkpoint),
                                   start.id if i == len(reports)
                                   else f"after {p.layers[i - 1].service}"))
    layers += [PlannedLayer(layer.service, layer.key, "CACHED", "unchanged", final.id)
               for layer in p.layers[missing[-1] + 1:]]
    return DryRun(**common, final_key=p.final_key, final_image_id=final.id,
                  launch_from=start.id, layers=layers)


def peek_base(target: tb.Target, resolved: resolve.Resolved) -> tb.Image | None:
    """The base as ``build`` would resolve it, without creating it; errors as the build's."""
    base = resolved.base
    try:
        return target.peek_base(base.ref if base else None)
    except BaseRefError as exc:
        if base is None:
            raise
        raise AmifileError(str(exc), base.pos, source_line=resolve.source_line(base.pos)) from exc


def dry_run(target: tb.Target, options: engine.BuildOptions, reporter: Reporter | None = None, *,
            resolved: resolve.Resolved | None = None) -> DryRun:
    """What ``engine.build(target, options)`` would do now (see the module doc).

    The cyclic garbage collector is paused meanwhile, as while parsing and planning: the
    report's objects (one per layer) set off full passes that walked every object of a
    large plan again (2 s of a 325,000-service dry run)."""
    with gcpause.paused():
        return _dry_run(target, options, reporter, resolved=resolved)


def _dry_run(target: tb.Target, options: engine.BuildOptions, reporter: Reporter | None, *,
             resolved: resolve.Resolved | None) -> DryRun:
    reporter = reporter or Reporter(quiet=True)
    target.log = reporter.note
    mask_secrets(reporter, options.secrets)
    resolved = resolved or engine.load_amifile(options.amifile)
    base = peek_base(target, resolved)
    with contextlib.ExitStack() as stack:
        b = engine.BuildState(target=target, options=options, reporter=reporter, stack=stack,
                              build_id="dry-run")
        b.base = base or tb.Image(id=NO_BASE_ID)
        b.plan = engine.make_plan(b, resolved)
        p = b.plan
        common = dict(target=target.name, amifile=p.amifile_path, base=p.base_ref,
                      base_image_id=base.id if base else None)
        if base is not None:   # the look-ups a build would make, asked as it asks them
            target.plan_lookups([layer.key for layer in p.layers] + [p.final_key],
                                [layer.service for layer in p.layers],
                                project=project_match(imagetags.common_tags(
                                    p, "", options.name, options.origin)))
        if base is None:
            layers = [PlannedLayer(layer.service, None, "RUN", "no base image yet",
                                   NO_BASE_ID if i == 0 else f"after {p.layers[i - 1].service}")
                      for i, layer in enumerate(p.layers)]
            return DryRun(**common, final_key=None, final_image_id=None, launch_from=NO_BASE_ID,
                          layers=layers, secrets=needed_secrets(p, layers, options.secrets))
        final = (None if options.no_cache or not engine.looks_up(target)
                 else target.find_image(p.final_key))
        missing = [] if final is None else missing_checkpoints(target, p, options.checkpoint)[0]
        if final is not None and not missing:
            layers = [PlannedLayer(layer.service, layer.key, "CACHED", "unchanged", final.id)
                      for layer in p.layers]
            return DryRun(**common, final_key=p.final_key, final_image_id=final.id,
                          launch_from=None, layers=layers)
        if missing:   # as build(): the checkpoints an explicit --checkpoint asks for are made
            return _fill(b, common, final, missing)
        start, reports = engine.find_prefix(b)
        layers = [PlannedLayer(r.service, r.key, r.status, r.reason, start.id) for r in reports]
        earlier_miss: str | None = None   # as run_layers keeps it: the first layer that ran
        match = project_match(imagetags.common_tags(p, "", options.name, options.origin))
        history = history_of(target)   # the store does not change in a dry run
        every = "--no-cache" if options.no_cache else (
            engine.PROVISION_ONLY if target.provision_only else None)
        first = (every is None and len(reports) < len(p.layers)
                 and first_build(target, p, match, history))
        for i in range(len(reports), len(p.layers)):
            layer = p.layers[i]
            reason = (every if every is not None
                      else why_missed(target, layer, earlier_miss=earlier_miss, match=match,
                                      first=first, history=history))
            layers.append(PlannedLayer(layer.service, layer.key, "RUN", reason,
                                       start.id if i == len(reports)
                                       else f"after {p.layers[i - 1].service}"))
            earlier_miss = earlier_miss or layer.service
        return DryRun(**common, final_key=p.final_key, final_image_id=None, launch_from=start.id,
                      layers=layers, secrets=needed_secrets(p, layers, options.secrets))


def needed_secrets(p, layers: list[PlannedLayer], given) -> list[NeededSecret]:
    """The secrets the layers that would run read, by name (their values are not needed)."""
    running = [layer.service for layer in layers if layer.status == "RUN"]
    return [NeededSecret(name, services, name in given)
            for name, services in buildinputs.secrets_needed(p, running).items()]
