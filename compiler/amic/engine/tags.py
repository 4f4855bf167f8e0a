"""The tags the engine puts on every image it makes (names in :mod:`amic.contract`).

Pure functions of the plan and the build: a target stores them as they are
(local: ``meta.json``; ec2: EC2 tags, fitted to EC2's limit by the target).
"""

from __future__ import annotations

import os

from amic import contract
from amic.compile import plan as planmod


def common_tags(plan: planmod.Plan, build_id: str, name: str | None,
                origin: str | None = None) -> dict[str, str]:
    """Tags of every image of a build: the readable name, and the project's identity
    (``contract.project_id`` of ``origin``, the Amifile's place in its git repository, and
    the explicit name: ``--name``, else ``NAME``) when there is one. No digest of the
    Amifile's path (the old ``amic:source``): a path is guessable."""
    explicit = name or plan.resolved.name
    tags = {contract.TAG_AMIFILE: os.path.basename(plan.amifile_path),
            contract.TAG_BUILD: build_id,
            contract.TAG_NAME: contract.project_name(plan.amifile_path, explicit)}
    project = contract.project_id(origin, explicit)
    if project is not None:
        tags[contract.TAG_PROJECT] = project
    return tags


def layer_tags(common: dict[str, str], layer: planmod.Layer) -> dict[str, str]:
    """A layer checkpoint: its key, service, parent and the digest of each input."""
    tags = {**common, contract.TAG_KEY: layer.key, contract.TAG_KIND: contract.KIND_LAYER,
            contract.TAG_SERVICE: layer.service, contract.TAG_PARENT_KEY: layer.parent_key}
    for name, digest in layer.inputs.items():
        tags[contract.TAG_INPUT_PREFIX + name] = digest
    return tags


def final_tags(plan: planmod.Plan, common: dict[str, str]) -> dict[str, str]:
    """The final image: LABELs, its key, the key of every layer in it, and FROM."""
    tags = {**plan.labels, **common, contract.TAG_KEY: plan.final_key,
            contract.TAG_KIND: contract.KIND_FINAL}
    for layer in plan.layers:
        tags[contract.TAG_LAYER_PREFIX + layer.service] = layer.key
    if plan.base_ref:
        tags[contract.TAG_BASE] = plan.base_ref
    return tags
