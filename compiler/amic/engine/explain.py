"""What the engine tells the user about a layer: why it ran, and where it failed.

Both point back at the Amifile: a miss names the inputs that changed (from
the ``amic:in:*`` tags of this project's earlier checkpoints), or says it is the
project's first build, or that no checkpoint of the layer was kept; a failure names the
service, its Amifile line and the tail of its output.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from amic import contract
from amic.amifile import resolve
from amic.compile import plan as planmod
from amic.errors import BuildError, Pos
from amic.engine.progress import OutputRouter
from amic.targets import base as tb

INPUT_ORDER = ("packages", "copy", "init", "env", "args", "runtime", "parent")
"""The layer inputs in the order a miss names them."""


def project_match(common: Mapping[str, str]) -> dict[str, str | None]:
    """The tags an image of this project carries (``common``: the build's ``common_tags``):
    its identity ``amic:project``; without one (no NAME, no git remote) the readable name on
    images that have no identity either, the nearest there is."""
    project = common.get(contract.TAG_PROJECT)
    if project:
        return {contract.TAG_PROJECT: project}
    return {contract.TAG_PROJECT: None, contract.TAG_NAME: common.get(contract.TAG_NAME)}


def ours(img: tb.Image, match: Mapping[str, str | None]) -> bool:
    return all(img.tags.get(name) == value for name, value in match.items())


History = Callable[[str], "list[tb.Image]"]
"""A service's layer checkpoints, newest first: ``Target.images_for_service``."""


def history_of(target: tb.Target) -> History:
    """``target.images_for_service``, or, where that is the default (a scan of every image
    per call), one scan grouped by service: the same lists, for a dry run that asks once per
    layer (per service: the store's size times the services). Only while the store does not
    change (not during a build)."""
    if type(target).images_for_service is not tb.Target.images_for_service:
        return target.images_for_service
    by_service: dict[str | None, list[tb.Image]] = {}
    for img in target.list_images():
        if img.tags.get(contract.TAG_KIND) == contract.KIND_LAYER:
            by_service.setdefault(img.tags.get(contract.TAG_SERVICE), []).append(img)
    for found in by_service.values():   # stable, as the default's sort of the same list
        found.sort(key=lambda img: img.created or "", reverse=True)
    return lambda service: list(by_service.get(service, ()))


def first_build(target: tb.Target, plan: planmod.Plan, match: Mapping[str, str | None],
                history: History | None = None) -> bool:
    """True when nothing of this project was kept: no checkpoint of any of its services, no
    final image (asked only then: an earlier ``--checkpoint none`` build kept just that).
    Never for a target that keeps no images (ssh): it has no history to say so from."""
    if not target.keeps_images:
        return False
    history = history or target.images_for_service
    for service in dict.fromkeys(layer.service for layer in plan.layers):
        if any(ours(img, match) for img in history(service)):
            return False
    return not target.has_final(match)


def why_missed(target: tb.Target, layer: planmod.Layer, *, earlier_miss: str | None,
               match: Mapping[str, str | None], first: bool,
               history: History | None = None) -> str:
    """Why ``layer`` runs, from this project's own history only (``match``, see
    :func:`project_match`): another project's layer of the same service name says nothing
    about this one. ``first``: :func:`first_build`."""
    if first:
        return "first build"
    history = [img for img in (history or target.images_for_service)(layer.service)
               if ours(img, match)]
    if not history:
        # an earlier build ran this layer but kept no checkpoint of it to compare with
        if earlier_miss:
            return f"parent changed ({earlier_miss} re-ran)"
        return "no checkpoint kept" if target.keeps_images else "no earlier build"

    def changed(img: tb.Image) -> list[str]:
        return [name for name in INPUT_ORDER if name in layer.inputs and
                img.tags.get(contract.TAG_INPUT_PREFIX + name) != layer.inputs[name]]

    diffs = min((changed(img) for img in history[:50]), key=len)
    if not diffs:
        # ARG values are in the key but not in the tags (no digest of a value is published)
        return "an ARG value changed, or the checkpoint was removed"
    own = [d for d in diffs if d != "parent"]
    if own:
        return ", ".join(own) + " changed"
    if earlier_miss:
        return f"parent changed ({earlier_miss} re-ran)"
    return "base image changed" if layer.inputs.get("parent") else "parent changed"


def layer_failure(plan: planmod.Plan, service: str, rc: int, router: OutputRouter) -> BuildError:
    """The failing service, its Amifile line and the tail of its output."""
    failing = next((s for s in router.failures), service)
    code, where = router.failures.get(failing, (str(rc), None))
    pos = failure_pos(plan, failing, where)
    lines = [f"service {failing} failed (exit {code})"
             + (f" at {pos.file}:{pos.line}" if pos else (f" at {where}" if where else ""))]
    if pos is not None:
        text = resolve.source_line(pos)
        if text is not None:
            lines.append(f"    {text.strip()}")
    tail = router.tail(failing) or router.tail(service)
    if tail:
        lines.append(f"last output of {failing}:")
        lines.append(indent(tail))
    return BuildError("\n".join(lines))


def failure_pos(plan: planmod.Plan, service: str, where: str | None) -> Pos | None:
    """The INIT or COPY the runtime reported as ``file:line``, else the SERVICE line."""
    try:
        svc = plan.service(service).service
    except KeyError:
        return None
    if where and ":" in where:
        name, _, line = where.rpartition(":")
        for item in (*svc.inits, *svc.copies):
            if str(item.pos.line) == line and os.path.basename(item.pos.file) == name:
                return item.pos
        # The runner names the line of the failing command inside an INIT body.
        for script in svc.inits:
            first = script.body_line or script.pos.line
            if (line.isdigit() and os.path.basename(script.pos.file) == name
                    and first <= int(line) < first + max(1, script.text.count("\n"))):
                return Pos(script.pos.file, int(line))
    return svc.pos


def indent(lines: list[str]) -> str:
    return "\n".join(f"    {line}" for line in lines)
