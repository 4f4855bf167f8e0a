"""The build engine: one pipeline for every target.

The build reads as a flat list of steps (Packer multistep style). Each step
that creates something registers its cleanup on one ``ExitStack`` right after
the thing exists, so cleanup runs in reverse order on success, on error and on
Ctrl-C/SIGTERM (the CLI turns SIGTERM into KeyboardInterrupt)::

    resolve_base        FROM -> target image (local: cached debootstrap root)
    make_plan           layer keys chained on the base image id; the target's check_final
    find_final          cached: print its id (make checkpoints a --checkpoint asks for first)
    find_prefix         longest cached prefix of layers, and why the rest missed
    write_artifact      stage2 tarball in a temporary file          (cleanup: delete)
    launch              machine from the prefix image               (cleanup: release)
    upload_stage2       the tar piped in (or put once), unpacked, `amic install`
    run_layers          `amic init <svc>` per layer, checkpoint per policy
    finalize            `amic install-boot-hook`, `amic prepare-image`
    snapshot_final      record the image under the final key

Under ``--on-error ask`` every step from the launch on can be retried (``amic.engine.onerror``;
a target's own steps through ``Target.step``); ``--debug`` pauses before the launch, after
each layer and before the final image. A target that makes no image (``provision_only``:
ec2 ``--skip-create-ami``) gets every INIT run from the base, nothing looked up or kept.

Nothing here knows which cloud it talks to: everything target-specific is
behind :class:`amic.targets.base.Target`. The checkpoint policy is in
``amic.engine.checkpoint``; why a layer ran and where it failed, in
``amic.engine.explain``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import time
from collections.abc import Mapping
from pathlib import Path

import attrs

from amic import contract
from amic.amifile import resolve
from amic.compile import plan as planmod
from amic.engine import buildinputs, onerror, stage2file
from amic.engine import memo as buildmemo
from amic.engine import tags as imagetags
from amic.engine.checkpoint import (fill_reason, missing_checkpoints, parse_checkpoint,
                                   should_checkpoint)
from amic.engine.explain import first_build, indent, layer_failure, project_match, why_missed
from amic.engine.progress import OutputRouter, Reporter, mask_secrets, short
from amic.engine.values import BuildOptions, BuildResult, LayerReport
from amic.errors import AmifileError, BaseRefError, BuildError, UsageError
from amic.targets import base as tb

# -- the build -------------------------------------------------------------------


@attrs.define
class BuildState:
    """One build in progress: what every step reads, and what the steps before it found."""

    target: tb.Target
    options: BuildOptions
    reporter: Reporter
    stack: contextlib.ExitStack
    build_id: str
    started_ns: int = 0
    """Wall clock at the start (the build memo trusts only inputs older than this)."""
    timings: dict[str, float] = attrs.Factory(dict)
    plan: planmod.Plan | None = None
    base: tb.Image | None = None
    machine: tb.Machine | None = None
    leases: dict[str, contextlib.ExitStack] = attrs.Factory(dict)
    """The leases this build holds, by key, each closable on its own (see ``claim``)."""
    mark: str = attrs.Factory(contract.new_mark)
    """The nonce every runner command gets (``contract.MARK_VAR``): its markers carry it."""
    checkpointed: set[str] = attrs.Factory(set)
    """Services whose layer checkpoint this build knows to exist (for the build memo)."""

    @contextlib.contextmanager
    def timed(self, name: str):
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.monotonic() - t0


def new_build_id() -> str:
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def build(target: tb.Target, options: BuildOptions, reporter: Reporter | None = None, *,
          resolved: resolve.Resolved | None = None) -> BuildResult:
    """Build the Amifile named in ``options`` on ``target``; return the image and what it took.

    ``resolved`` skips reading the file (tests). Raises BuildError when a layer
    fails (with the service, its Amifile line and the tail of its output),
    UsageError for bad options, AmifileError for a bad Amifile.
    """
    reporter = reporter or Reporter(quiet=True)
    if target.provision_only and options.checkpoint not in (None, "none"):
        raise UsageError(f"--skip-create-ami makes no image and no snapshot: --checkpoint "
                         f"{options.checkpoint} would make layer snapshots (drop one of the two)")
    t_start = time.monotonic()
    started_ns = time.time_ns()
    target.keep_on_error = options.on_error == "abort"
    target.log = reporter.note
    mask_secrets(reporter, options.secrets)
    with contextlib.ExitStack() as stack:
        b = BuildState(target=target, options=options, reporter=reporter, stack=stack,
                       build_id=new_build_id(), started_ns=started_ns)
        stack.callback(reporter.end)
        target.step = lambda what, fn, retry=True: onerror.run_step(b, what, fn, retry=retry)
        stack.enter_context(target.build_lock())
        with b.timed("resolve"):
            resolved = resolved or load_amifile(options.amifile)
        base_ref = resolved.base.ref if resolved.base else "(the target's default)"
        with b.timed("base"), reporter.step(f"base {base_ref}"):
            b.base = resolve_base(b, resolved)
        with b.timed("plan"):
            b.plan = make_plan(b, resolved)
            if not target.provision_only:   # no image: no name to check
                target.check_final(b.plan.final_key, imagetags.final_tags(b.plan, _common_tags(b)))
            target.plan_lookups([layer.key for layer in b.plan.layers] + [b.plan.final_key],
                                [layer.service for layer in b.plan.layers],
                                project=project_match(_common_tags(b)))
        with b.timed("lookup"):
            if target.fast_rebuild and options.context is None and not options.no_cache:
                buildmemo.recall_final(target, options.amifile, dict(options.build_args))
            final = (None if options.no_cache or not looks_up(target)
                     else target.find_image(b.plan.final_key))
        if final is None and looks_up(target):
            with b.timed("lease"):
                final, start, reports = claim(b)
        elif final is None:
            start, reports = find_prefix(b)
        if final is not None:   # cached; a --checkpoint asked for may still miss checkpoints
            with b.timed("lookup"):
                missing, b.checkpointed = missing_checkpoints(target, b.plan, options.checkpoint)
            result = (run_build(b, *find_prefix(b, below=missing[0]), fill=(final, missing))
                      if missing else cached_result(b, final))
        else:
            result = run_build(b, start, reports)
    if options.no_cache and not result.cached:  # out of the build lock: see the target's
        for note in target.remove_superseded():
            reporter.note(note)
    result.timings["total"] = time.monotonic() - t_start
    return result


def load_amifile(path: str) -> resolve.Resolved:
    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file")
    return resolve.load(path)


def resolve_base(b: BuildState, resolved: resolve.Resolved) -> tb.Image:
    """FROM as the target's image. A reference the target does not know is a mistake in the
    Amifile, so it is reported at the FROM line (targets never see positions)."""
    base = resolved.base
    try:
        return b.target.resolve_base(base.ref if base else None)
    except BaseRefError as exc:
        if base is None:
            raise
        raise AmifileError(str(exc), base.pos, source_line=resolve.source_line(base.pos)) from exc


def make_plan(b: BuildState, resolved: resolve.Resolved) -> planmod.Plan:
    p = planmod.make_plan(resolved, b.options.build_args, base_image_id=b.base.id,
                         context=b.options.context)
    buildinputs.check(p, b.options.build_args, b.options.secrets, warn=b.reporter.warn,
                      allow_missing_args=b.options.allow_missing_args)
    return p


def cached_result(b: BuildState, final: tb.Image) -> BuildResult:
    p = b.plan
    n = len(p.layers)
    reports = []
    for i, layer in enumerate(p.layers, 1):
        reports.append(LayerReport(layer.service, layer.key, "CACHED", "unchanged"))
        b.reporter.layer(i, n, layer.service, "CACHED", "unchanged", None)
    b.reporter.note(f"unchanged: image {short(final.id)} (final key {p.final_key[:12]})")
    with b.timed("publish"):
        b.target.publish_cached(final, b.build_id)
    return _result(b, final, reports, cached=True)


def find_prefix(b: BuildState, below: int | None = None) -> tuple[tb.Image, list[LayerReport]]:
    """The image to start from (longest cached prefix [below layer ``below``]), cached reports."""
    p = b.plan
    start, done = b.base, 0
    if not b.options.no_cache and looks_up(b.target):
        with b.timed("lookup"):
            for i in range((len(p.layers) if below is None else below) - 1, -1, -1):
                img = b.target.find_image(p.layers[i].key)
                if img is not None:
                    start, done = img, i + 1
                    b.checkpointed.add(p.layers[i].service)
                    break
    reports = []
    for i, layer in enumerate(p.layers[:done]):
        where = (f"checkpoint {short(start.id)}" if i == done - 1
                 else f"below checkpoint {short(start.id)}")
        reports.append(LayerReport(layer.service, layer.key, "CACHED", where))
    return start, reports


PROVISION_ONLY = "--skip-create-ami (every INIT runs)"
"""Why every layer runs on a target that makes no image (``Target.provision_only``)."""


def looks_up(target: tb.Target) -> bool:
    """Whether a build asks ``target`` for cached images: not where it keeps none (ssh), nor
    where it makes none (``provision_only``: Packer's skip_create_ami always provisions)."""
    return target.keeps_images and not target.provision_only


def claim(b: BuildState) -> tuple[tb.Image | None, tb.Image, list[LayerReport]]:
    """Take the leases of every key this build will make, before anything is launched:
    ``(final image if another build made it meanwhile, start image, cached reports)``.

    The keys are the layers above the cached prefix and then the final key, in chain
    order. After each lease the key is looked up again: the build that held it may have
    made it; then every lease goes and the search starts over from the longer prefix.
    Chains that share a key share every key below it, so two builds take their shared
    leases first and in the same order: they never wait on each other in a cycle. The
    leases are held until the build ends (on ``b.stack``, let go after the machine), or
    until a checkpoint covers them (``release_leases``). Before anything relies on them
    they are confirmed together (``Target.confirm_leases``: one read-back on ec2); one
    that turned out another build's means starting over, which waits for that build.
    """
    p = b.plan
    while True:
        start, reports = find_prefix(b)
        held = contextlib.ExitStack()
        b.leases = {}
        made = False
        try:
            for key in [layer.key for layer in p.layers[len(reports):]] + [p.final_key]:
                one = held.enter_context(contextlib.ExitStack())
                one.enter_context(b.target.lease(key, build_id=b.build_id))
                b.leases[key] = one
                if not b.options.no_cache and b.target.find_image(key) is not None:
                    made = True
                    break
            lost = [] if made else b.target.confirm_leases()
        except BaseException:
            held.close()
            raise
        if not made and not lost:
            b.stack.enter_context(held)
            return None, start, reports
        held.close()
        if lost:
            continue
        final = b.target.find_image(p.final_key)
        if final is not None:
            return final, start, reports


def run_build(b: BuildState, start: tb.Image, reports: list[LayerReport],
              fill: tuple[tb.Image, list[int]] | None = None) -> BuildResult:
    """Run the layers above ``start`` and record the final image; ``fill`` = (cached final,
    layers missing a checkpoint): run up to the last of those, snapshot only them."""
    p = b.plan
    n = len(p.layers)
    for i, r in enumerate(reports, 1):
        b.reporter.layer(i, n, r.service, "CACHED", r.reason, None)
    buildinputs.require_secrets(p, [layer.service for layer in p.layers[len(reports):]],
                                b.options.secrets)
    with b.timed("artifact"):
        tarball = write_artifact(b)
    onerror.pause(b, "stage2 artifact", then=f"launch an instance from {short(start.id)}")
    with b.timed("launch"):
        b.machine = onerror.run_step(b, "launching", lambda: launch(b, start))
    try:
        with b.timed("upload"):
            onerror.run_step(b, "uploading stage2", lambda: upload(b, tarball))
        reports = run_layers(b, reports, fill=fill and fill[1])
        if fill:   # the layers above the last missing checkpoint: in the final image as they are
            reports += [LayerReport(layer.service, layer.key, "CACHED", "unchanged")
                        for layer in p.layers[len(reports):]]
        image = finish(b, start) if fill is None else fill[0]
        if fill:
            b.target.publish_cached(image, b.build_id)
    except BuildError as exc:
        if b.options.on_error == "abort" and b.machine is not None:
            raise BuildError(f"{exc}\n\nthe machine was left for debugging; reach it with:\n"
                             f"    {b.machine.describe()}") from exc
        raise
    ran = [r for r in reports if r.status == "RUN"]
    b.reporter.note((f"made the missing checkpoints of image {short(image.id)}: "
                     if fill else f"built image {short(image.id)}: ") + (
        f"{len(ran)} of {len(reports)} layers ran, {sum(r.seconds or 0 for r in ran):.1f}s of init"
        if ran else "no init ran (new stage2 on cached layers)"))
    return _result(b, image, reports, cached=False)


def finish(b: BuildState, start: tb.Image) -> tb.Image:
    """The boot hook and prepare-image, then the final image (in place: the machine)."""
    with b.timed("finalize"):
        onerror.run_step(b, "install-boot-hook, prepare-image", lambda: finalize(b))
    if not b.target.keeps_images:   # provisioned in place (ssh): the machine is the result
        return start
    onerror.pause(b, "install-boot-hook, prepare-image", then=(
        "the end of the build (--skip-create-ami: no image)" if b.target.provision_only
        else "stop the machine and make the final image"))
    with b.timed("snapshot"):
        return snapshot_final(b)


def write_artifact(b: BuildState) -> Path:
    return stage2file.artifact_file(b.plan, b.stack)


def launch(b: BuildState, image: tb.Image) -> tb.Machine:
    b.reporter.begin(f"launching from {short(image.id)}")
    machine = b.stack.enter_context(b.target.launch(image, build_id=b.build_id))
    b.reporter.end()
    return machine


def upload(b: BuildState, tarball: Path) -> None:
    upload_stage2(b, tarball)
    mark_build_key(b)


def _run(b: BuildState, command: str, what: str, *, env: Mapping[str, str] | None = None,
         service: str | None = None, stdin_path: Path | None = None) -> tuple[int, OutputRouter]:
    router = OutputRouter(b.reporter.output, default=service or what, mark=b.mark)
    extra = {} if stdin_path is None else {"stdin_path": stdin_path}   # takes_stdin machines
    rc = b.machine.run(command, env={**(env or {}), contract.MARK_VAR: b.mark}, on_output=router,
                       **extra)
    return rc, router


def upload_stage2(b: BuildState, tarball: Path) -> None:
    b.reporter.begin("uploading stage2")
    install = 'd=$(mktemp -d) && cd "$d" && tar -xf {src} && sh stage2/amic install; rc=$?; cd /; '
    if b.machine.takes_stdin:    # one command instead of a copy and a command
        rc, router = _run(b, install.format(src="-") + 'rm -rf "$d"; exit $rc', "install",
                          stdin_path=tarball)
    else:
        b.machine.put(tarball, contract.UPLOAD_PATH, mode=0o600)
        rc, router = _run(b, install.format(src=contract.UPLOAD_PATH)
                          + f'rm -rf "$d" {contract.UPLOAD_PATH}; exit $rc', "install")
    b.reporter.end()
    if rc != 0:
        raise BuildError(f"installing the stage2 on the machine failed (exit {rc}):\n"
                         + indent(router.tail("install")))


def mark_build_key(b: BuildState) -> None:
    """Mark the key this build logs in with (cloud-init installed it): prepare-image and
    every checkpoint remove all marked lines, so no image, this one or one built on its
    layers, authorises it."""
    public = b.machine.build_public_key
    if not public:
        return
    fields = public.split()
    blob = fields[1] if len(fields) > 1 else fields[0]
    rc, router = _run(b, f"{contract.RUNNER} build-key mark {shlex.quote(blob)}", "build-key")
    if rc != 0:
        raise BuildError(f"marking the build key on the machine failed (exit {rc}):\n"
                         + indent(router.tail("build-key")))


def run_layers(b: BuildState, reports: list[LayerReport],
               fill: list[int] | None = None) -> list[LayerReport]:
    """``amic init`` for every layer above the cached prefix, checkpointing per policy
    (``fill``: up to the last of these layers, checkpointing only them)."""
    p = b.plan
    n = len(p.layers)
    policy = parse_checkpoint(b.options.checkpoint or b.target.default_checkpoint, p.enabled)
    if not b.target.keeps_images or b.target.provision_only:
        policy = "none"
    earlier_miss: str | None = None
    match = project_match(_common_tags(b))
    first: bool | None = None       # asked at the first layer that runs, once
    since_checkpoint = 0.0
    for i in range(len(reports), n if not fill else fill[-1] + 1):
        layer = p.layers[i]
        if b.target.provision_only:
            reason = PROVISION_ONLY
        elif b.options.no_cache:
            reason = "--no-cache"
        elif fill:
            reason = fill_reason(i, fill, b.options.checkpoint)
        else:
            first = first_build(b.target, p, match) if first is None else first
            reason = why_missed(b.target, layer, earlier_miss=earlier_miss, match=match,
                                first=first)
        seconds, skipped = onerror.run_step(b, f"[{i + 1}/{n}] {layer.service} init",
                                            lambda: init_layer(b, i, reason))  # noqa: B023
        if skipped:
            # In place (ssh): the host already ran this init with the same hash.
            reason = "already initialised on the host"
            b.reporter.layer(i + 1, n, layer.service, "CACHED", reason, seconds)
            reports.append(LayerReport(layer.service, layer.key, "CACHED", reason,
                                       round(seconds, 3), None))
            continue
        since_checkpoint += seconds
        checkpoint = None
        b.reporter.layer(i + 1, n, layer.service, "RUN", reason, seconds)
        if (i in fill) if fill else should_checkpoint(policy, service=layer.service,
                last=i == n - 1, uncheckpointed_seconds=since_checkpoint,
                snapshot_seconds=b.target.snapshot_seconds):
            with b.timed("snapshot"), b.reporter.step(f"[{i + 1}/{n}] {layer.service} snapshot"):
                checkpoint = b.target.snapshot(b.machine, key=layer.key, final=False,
                                               tags=imagetags.layer_tags(_common_tags(b),
                                                                         layer)).id
            since_checkpoint = 0.0
            b.checkpointed.add(layer.service)
            release_leases(b, [lay.key for lay in p.layers[:i + 1]])
        reports.append(LayerReport(layer.service, layer.key, "RUN", reason, round(seconds, 3),
                                   checkpoint))
        onerror.pause(b, f"[{i + 1}/{n}] {layer.service}")
        earlier_miss = earlier_miss or layer.service
    return reports


def release_leases(b: BuildState, keys: list[str]) -> None:
    """Let go of the leases of ``keys`` once a checkpoint holds their work: a build that
    shares only this prefix goes on from the checkpoint instead of waiting for this whole
    build (layers below it that have no image of their own it builds itself, as it must)."""
    for key in keys:
        lease = b.leases.pop(key, None)
        if lease is not None:
            lease.close()


def init_layer(b: BuildState, i: int, reason: str) -> tuple[float, bool]:
    """Run layer ``i``'s init; return its seconds and whether the host skipped it as done.
    A failure raises, naming the service and its Amifile line."""
    p = b.plan
    n = len(p.layers)
    service = p.layers[i].service
    b.reporter.begin(f"[{i + 1}/{n}] {service} init")
    t0 = time.monotonic()
    rc, router = _run(b, f"{contract.RUNNER} init {service}", "init", service=service,
                      env=buildinputs.init_env(p, service, b.options.secrets))
    seconds = time.monotonic() - t0
    b.timings[f"init:{service}"] = seconds
    b.reporter.end()
    if rc != 0:
        b.reporter.layer(i + 1, n, service, "FAILED", reason, seconds)
        raise layer_failure(p, service, rc, router)
    return seconds, router.finished.get(service) == "skipped"


def finalize(b: BuildState) -> None:
    """The boot hook, and (only when an image is made) the cleanup before the snapshot:
    prepare-image removes host keys and machine-id, which an in-place host keeps."""
    command = f"{contract.RUNNER} install-boot-hook"
    if b.target.keeps_images:
        command += f" && {contract.RUNNER} prepare-image"
        # The key this build logged in with must not be baked into the image.
        build_key = b.machine.build_public_key
        if build_key:
            command += f" --remove-authorized-key {shlex.quote(build_key)}"
    b.reporter.begin("install-boot-hook" + (", prepare-image" if b.target.keeps_images else ""))
    rc, router = _run(b, command, "finalize")
    b.reporter.end()
    if rc != 0:
        raise BuildError(f"finishing the image failed (exit {rc}):\n"
                         + indent(router.tail("finalize")))


def snapshot_final(b: BuildState) -> tb.Image:
    p = b.plan
    b.reporter.begin("snapshot")
    tags = imagetags.final_tags(p, _common_tags(b))
    image = b.target.snapshot(b.machine, key=p.final_key, final=True, tags=tags)
    b.reporter.end()
    return image


def _common_tags(b: BuildState) -> dict[str, str]:
    return imagetags.common_tags(b.plan, b.build_id, b.options.name, b.options.origin)


def _result(b: BuildState, image: tb.Image, reports: list[LayerReport], *, cached: bool) -> BuildResult:
    if b.target.fast_rebuild:
        with contextlib.suppress(OSError):
            buildmemo.save(b.target, b.options, b.plan, b.base, image, reports,
                           started_ns=b.started_ns, checkpointed=b.checkpointed)
    return BuildResult(image_id=image.id, final_key=b.plan.final_key, target=b.target.name,
                       base_image_id=b.base.id, amifile=b.plan.amifile_path, layers=reports,
                       cached=cached, timings=b.timings, regions=_regions(b.target, image))


def _regions(target, image: tb.Image) -> dict[str, str]:
    """Every region's id of the final image (a target's copies: ec2 ``--copy-to-region``)."""
    copies = getattr(target, "copies", None)
    return {target.region: image.id, **copies} if copies else {}
