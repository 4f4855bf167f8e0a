"""Checkpoint policy: after which layers a build keeps a reusable image.

A checkpoint costs a snapshot (local: a rename; ec2: a live EBS snapshot, seconds on the
build's path, the AMI registered only when a later build starts from it) and saves
re-running every init below it when a later layer changes. The policy comes from
``--checkpoint`` or the target's ``default_checkpoint``.

``auto`` keeps a layer once the init time since the previous checkpoint reaches the
target's ``snapshot_seconds``: below that, re-running those inits costs less than the
checkpoint would (ec2: 10 s, so nearly every layer that installs something is kept;
a run of trivial layers shares one checkpoint). The last layer is always kept.

A policy asked for explicitly is honoured by a build whose final image is cached too:
``--checkpoint all`` after an ``auto`` build makes the checkpoints that build skipped
(``missing_checkpoints``; the engine runs the layers from the deepest checkpoint below
the first missing one and snapshots only the missing ones, the final image stays).
"""

from __future__ import annotations

from collections.abc import Sequence

from amic.errors import UsageError
from amic.targets.base import CHECKPOINT_POLICIES, Target

Policy = str | frozenset[str]
"""A built-in policy name (``CHECKPOINT_POLICIES``) or the services to checkpoint after."""


def parse_checkpoint(policy: str, services: tuple[str, ...]) -> Policy:
    """A built-in policy name, or the set of services named (validated against the plan)."""
    if policy in CHECKPOINT_POLICIES:
        return policy
    names = frozenset(n.strip() for n in policy.split(",") if n.strip())
    unknown = sorted(names - set(services))
    if not names or unknown:
        raise UsageError(f"--checkpoint {policy!r}: expected one of "
                         f"{', '.join(CHECKPOINT_POLICIES)} or service names"
                         + (f" (unknown: {', '.join(unknown)})" if unknown else ""))
    return names


def should_checkpoint(policy: Policy, *, service: str, last: bool,
                      uncheckpointed_seconds: float, snapshot_seconds: float) -> bool:
    """Whether to snapshot after a layer. The last layer is kept unless the policy is ``none``,
    so that a build whose only change is UPDATE starts from it."""
    if policy == "none":
        return False
    if last or policy == "all":
        return True
    if policy == "last":
        return False
    if policy == "auto":
        return uncheckpointed_seconds >= snapshot_seconds
    return service in policy


def asked_for(policy: Policy, services: Sequence[str]) -> tuple[str, ...]:
    """The layers (services, in order) whose checkpoints ``policy`` asks to exist once a build
    is done: ``all`` every layer, a list those named, ``last`` the last one. ``auto`` and
    ``none`` ask for none: ``auto`` weighs the init time of layers it runs, and has
    nothing to weigh for layers that are cached."""
    if policy == "all":
        return tuple(services)
    if policy == "last":
        return tuple(services[-1:])
    if isinstance(policy, frozenset):
        return tuple(s for s in services if s in policy)
    return ()


def missing_checkpoints(target: Target, plan, asked: str | None) -> tuple[list[int], set[str]]:
    """For a build whose final image exists: the indexes of the layers the policy the user
    asked for (``--checkpoint``; None = the target's default, which only applies to layers a
    build runs) keeps but which have no image, and the services whose checkpoint exists."""
    if asked is None or not target.keeps_images:
        return [], set()
    services = [layer.service for layer in plan.layers]
    wanted = set(asked_for(parse_checkpoint(asked, plan.enabled), services))
    missing: list[int] = []
    present: set[str] = set()
    for i, layer in enumerate(plan.layers):
        if layer.service in wanted:
            if target.find_image(layer.key) is None:
                missing.append(i)
            else:
                present.add(layer.service)
    return missing, present


def fill_reason(i: int, missing: list[int], asked: str | None) -> str:
    """Why layer ``i`` of a cached image runs again: its checkpoint is missing, or one above."""
    if i in missing:
        return f"no checkpoint (--checkpoint {asked})"
    return "below a missing checkpoint"
