"""What the build engine needs from a place that runs machines and keeps images.

A target never sees syntax or the IR beyond the base image reference; the
engine (``amic.build``) drives it with cache keys and the stage2 tarball.
Every resource a target creates is released by the context manager that
created it, so cleanup runs on success, on error and on Ctrl-C/SIGTERM
(the CLI turns SIGTERM into KeyboardInterrupt).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Protocol

import attrs

OutputCallback = Callable[[str], None]
"""Receives remote output one line at a time (without the newline)."""


@attrs.frozen
class Image:
    """An image a target can launch machines from."""

    id: str
    """Target-specific id: ``ami-…`` on EC2, ``sha…`` on the local target."""
    key: str | None = None
    """The cache key it was recorded under (layer or final), if any."""
    tags: Mapping[str, str] = attrs.field(factory=dict, converter=dict)
    created: str | None = None
    """ISO-8601 creation time, when the target knows it."""


class Machine(Protocol):
    """A running machine (or chroot, or existing host) commands can be run on."""

    def run(self, command: str, *, env: Mapping[str, str] | None = None,
            on_output: OutputCallback | None = None, timeout: float | None = None) -> int:
        """Run ``command`` with ``sh -c`` as root; return its exit status.

        ``env`` values (ARG values among them) must reach the command without
        being written to the machine's disk or shown on its command line.
        Output (stdout and stderr, merged) is passed to ``on_output`` line by line.
        """

    def put(self, local: Path, remote: str, *, mode: int = 0o600) -> None:
        """Upload one file."""

    def describe(self) -> str:
        """How a human reaches this machine (printed with --on-error=abort)."""


class Target(abc.ABC):
    """A place that can turn machines into images and back."""

    name: str = "?"
    keeps_images: bool = True
    """False for targets that provision in place (``ssh``): no cache, no snapshots."""

    @abc.abstractmethod
    def resolve_base(self, base_ref: str | None) -> Image:
        """Turn ``FROM`` (``debian:12``, ``ami-…``, a filter; None = target default) into an image."""

    @abc.abstractmethod
    def find_image(self, key: str) -> Image | None:
        """The image recorded under a cache key, or None."""

    @abc.abstractmethod
    def launch(self, image: Image, *, build_id: str) -> contextlib.AbstractContextManager[Machine]:
        """Start a machine from ``image``; leaving the context releases everything it created.

        With ``keep_on_error`` set on the target, an exception leaves the machine
        running and its ``describe()`` is reported instead.
        """

    @abc.abstractmethod
    def snapshot(self, machine: Machine, *, key: str, final: bool,
                 tags: Mapping[str, str]) -> Image:
        """Capture the machine's disk as an image recorded under ``key``.

        ``final`` images are what the user asked for; the others are layer
        checkpoints. The machine stays usable afterwards (more layers may follow).
        """

    def list_images(self) -> Iterator[Image]:
        """Images this target recorded (for ``amic images`` / prune)."""
        return iter(())

    def remove_image(self, image: Image) -> None:
        """Delete an image and what only it uses (snapshots, layer dirs)."""
        raise NotImplementedError(f"the {self.name} target cannot remove images")
