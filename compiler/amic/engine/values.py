"""What a build takes and gives: :class:`BuildOptions` in, :class:`BuildResult` out.

Plain values, apart from the pipeline in :mod:`amic.engine.build` (which re-exports them,
so ``from amic.engine.build import BuildOptions`` keeps working).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import attrs


@attrs.frozen
class BuildOptions:
    """What the user asked for (``amic build`` flags)."""

    amifile: str = "Amifile"
    name: str | None = None
    """``--name``: the project's image name (``contract.TAG_NAME``); None = the Amifile's directory."""
    origin: str | None = None
    """The Amifile's place in its git repository (``amic.project``), for ``amic:project``."""
    build_args: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    """``--build-arg`` values (the environment and ARG defaults fill the rest)."""
    context: str | None = None
    """``--context``: the directory COPY reads from; None = the Amifile's directory."""
    no_cache: bool = False
    """Run every layer even if cached (the results are still recorded, as docker does)."""
    checkpoint: str | None = None
    """``none``, ``last``, ``all``, ``auto`` or ``svc1,svc2``; None = the target's default."""
    on_error: str = attrs.field(default="cleanup",
                                validator=attrs.validators.in_(("cleanup", "abort", "ask")))
    """``abort`` leaves the failed machine for debugging and prints how to reach it; ``ask``
    asks through ``prompt`` (:mod:`amic.engine.onerror`)."""
    debug: bool = False
    """``--debug``: pause after every step until ``prompt`` answers."""
    prompt: Callable[[str], str] | None = attrs.field(default=None, eq=False, repr=False)
    """Asks the user (the command line's terminal) and returns the answer."""
    secrets: Mapping[str, str] = attrs.field(factory=dict, converter=dict, repr=False)
    """``--secret`` values by name: INIT environments only (``amic.engine.buildinputs``)."""
    allow_missing_args: bool = False


@attrs.frozen
class LayerReport:
    """What happened to one layer."""

    service: str
    key: str
    status: str
    """``CACHED`` or ``RUN``."""
    reason: str
    """Why it ran (which inputs changed) or where the cached copy is."""
    seconds: float | None = None
    """Init time (RUN only)."""
    checkpoint: str | None = None
    """Id of the checkpoint image recorded after it, if one was."""


@attrs.frozen
class BuildResult:
    """The outcome of a build, as ``--json`` and ``--manifest`` print it."""

    image_id: str
    final_key: str
    target: str
    base_image_id: str
    amifile: str
    layers: tuple[LayerReport, ...] = attrs.field(converter=tuple)
    cached: bool
    """True when the final image was already there (no machine was started)."""
    timings: Mapping[str, float] = attrs.field(converter=dict)
    """Seconds per step (resolve, base, lookup, artifact, launch, upload, layers, finalize,
    snapshot, total)."""
    regions: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    """``{region: AMI id}`` when the image was copied to other regions (ec2), its own first."""

    def to_json(self) -> dict:
        return {**({"regions": dict(self.regions)} if self.regions else {}),
            "image_id": self.image_id,
            "final_key": self.final_key,
            "target": self.target,
            "base_image_id": self.base_image_id,
            "amifile": self.amifile,
            "cached": self.cached,
            "layers": [attrs.asdict(layer) for layer in self.layers],
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }
