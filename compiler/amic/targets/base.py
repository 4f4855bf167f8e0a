"""What the build engine needs from a place that runs machines and keeps images.

A target never sees syntax or the IR beyond the base image reference; the
engine (``amic.engine.build``) drives it with cache keys and the stage2 tarball.
Every resource a target creates is released by the context manager that
created it, so cleanup runs on success, on error and on Ctrl-C/SIGTERM
(the CLI turns SIGTERM into KeyboardInterrupt).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import attrs

from amic.contract import KIND_FINAL, KIND_LAYER, TAG_KIND, TAG_SERVICE

T = TypeVar("T")

OutputCallback = Callable[[str], None]
"""Receives remote output one line at a time (without the newline), as the machine wrote it:
a progress bar redrawn with carriage returns (apt, dpkg) arrives whole."""


def terminal_line(raw: str) -> str:
    """A line as a terminal shows it: progress redrawn with carriage returns keeps its last state.

    The one rule for every target: the engine's ``OutputRouter`` applies it to each line a
    build's machine writes, so no machine does (and ssh and ec2 show the same line alike).
    """
    line = raw.rstrip("\n").rstrip("\r")
    return line.rsplit("\r", 1)[-1] if "\r" in line else line


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


class Machine:
    """A running machine (or chroot, or existing host) commands can be run on.

    Every target's machine derives from it: the optional capabilities are attributes
    here, with the value a machine without them has, so the engine reads them plainly.
    """

    takes_stdin: bool = False
    """True when ``run`` also takes ``stdin_path`` (a local file fed to the command's standard
    input); the engine then pipes the stage2 into its install command instead of a ``put``
    and a second command."""
    build_public_key: str | None = None
    """The authorized_keys line a build logged in with, if the target installed one; the
    engine has prepare-image remove it before the snapshot."""

    def run(self, command: str, *, env: Mapping[str, str] | None = None,
            on_output: OutputCallback | None = None, timeout: float | None = None) -> int:
        """Run ``command`` with ``sh -c`` as root; return its exit status.

        ``env`` values (ARG values among them) must reach the command without
        being written to the machine's disk or shown on its command line.
        Output (stdout and stderr, merged) is passed to ``on_output`` line by line, carriage
        returns and all (the engine's router shows it as a terminal would: ``terminal_line``).
        """
        raise NotImplementedError

    def put(self, local: Path, remote: str, *, mode: int = 0o600) -> None:
        """Upload one file."""
        raise NotImplementedError

    def describe(self) -> str:
        """How a human reaches this machine (printed with --on-error=abort)."""
        raise NotImplementedError


CHECKPOINT_POLICIES = ("none", "last", "all", "auto")
"""Built-in checkpoint policies; a comma-separated list of service names is the fifth kind."""


class Target(abc.ABC):
    """A place that can turn machines into images and back."""

    name: str = "?"
    keeps_images: bool = True
    """False for targets that provision in place (``ssh``): no cache, no snapshots."""
    keep_on_error: bool = False
    """Set by the engine for ``--on-error=abort``: ``launch`` leaves a failed machine running."""
    default_checkpoint: str = "last"
    """Checkpoint policy when the user gives none: one of ``CHECKPOINT_POLICIES`` or service names.
    The last layer is always checkpointed (unless ``none``) so a changed UPDATE reuses every layer."""
    snapshot_seconds: float = 60.0
    """Rough cost of one snapshot; the ``auto`` policy checkpoints once that much init time
    has accumulated since the previous checkpoint."""
    provision_only: bool = False
    """True when the target makes no image (ec2 ``--skip-create-ami``, Packer's
    ``skip_create_ami``): the engine looks nothing up and keeps nothing, runs every INIT
    from the base, and ``snapshot`` of the final image makes none."""
    fast_rebuild: bool = False
    """True if an unchanged rebuild may be answered from the build memo (``amic.engine.memo``):
    the base reference resolves to the same image until a file in ``memo_paths`` changes, or
    ``confirm_memo`` checks with the target that it still does (ec2: the base is an AMI
    filter that AWS may answer differently tomorrow). The command line must know such a
    target's scheme too: ``amic.targets.MEMO``."""

    def step(self, what: str, fn: Callable[[], T], *, retry: bool | str = True) -> T:
        """Run ``fn``, one step of a target's own (waiting for SSH, creating an image, a
        region copy). The engine replaces it on the target with its ``--on-error ask``
        question (``amic.engine.onerror.run_step``: retry, or why not, clean up, abort);
        by default the step just runs."""
        return fn()

    def publish_cached(self, image: Image, build_id: str) -> None:
        """A cached final image answers this build: make sure it is published as this build
        asks (ec2: a ``--copy-to-region`` copy an earlier, interrupted build never finished).
        By default there is nothing to publish."""

    @abc.abstractmethod
    def resolve_base(self, base_ref: str | None) -> Image:
        """Turn ``FROM`` (``debian:12``, ``ami-…``, a filter; None = target default) into an image."""

    def peek_base(self, base_ref: str | None) -> Image | None:
        """``resolve_base`` without creating or changing anything (``amic build --dry-run``);
        None when resolving would make the base. The default is ``resolve_base``, for targets
        whose lookup only reads (ec2: DescribeImages)."""
        return self.resolve_base(base_ref)

    @abc.abstractmethod
    def find_image(self, key: str) -> Image | None:
        """The image recorded under a cache key, or None."""

    def plan_lookups(self, keys: Sequence[str], services: Sequence[str], *,
                     project: Mapping[str, str | None] | None = None) -> None:
        """The keys (layers in order, then the final key), services and project (the tags
        its images carry, None for a tag they lack: ``engine.explain.project_match``) the
        build will look up: a target whose look-ups cost API calls may ask for all of them
        at once."""

    def check_final(self, key: str, tags: Mapping[str, str]) -> None:
        """Called by the engine once the plan is made, before anything is looked up, leased
        or launched, with the final key and the tags the final image would get: a target
        raises here to refuse a build that would fail at its end (ec2: an ``--ami-name``
        another AMI has). The default: nothing to refuse."""

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

    def log(self, message: str) -> None:
        """Progress notes from the target (the engine replaces this with its reporter)."""

    def list_images(self) -> Iterator[Image]:
        """Images this target recorded (for ``amic images`` / prune)."""
        return iter(())

    def images_for_service(self, service: str) -> list[Image]:
        """Layer checkpoints ending with ``service``, newest first (to say why a layer missed).

        The default filters ``list_images``; targets with a cheaper query may override it.
        """
        found = [img for img in self.list_images()
                 if img.tags.get(TAG_KIND) == KIND_LAYER and img.tags.get(TAG_SERVICE) == service]
        found.sort(key=lambda img: img.created or "", reverse=True)
        return found

    def has_final(self, match: Mapping[str, str | None]) -> bool:
        """Whether a final image with the tags ``match`` exists (None: the tag is absent);
        asked once by a build whose project kept no checkpoint, to tell a first build from
        one whose earlier builds kept only their final image. The default filters
        ``list_images``; targets with a cheaper query may override it."""
        return any(img.tags.get(TAG_KIND) == KIND_FINAL
                   and all(img.tags.get(name) == value for name, value in match.items())
                   for img in self.list_images())

    def memo_paths(self, base: Image, image: Image) -> list[str]:
        """For ``fast_rebuild``: files whose change or removal means ``resolve_base`` may give
        another image than ``base``, or ``image`` may be gone."""
        return []

    def memo_facts(self, base_ref: str | None, base: Image, image: Image) -> dict:
        """For ``fast_rebuild``: what ``confirm_memo`` needs besides the build result (JSON)."""
        return {}

    def recall_final(self, key: str, image_id: str) -> None:
        """For ``fast_rebuild``: the image this machine's memo last recorded for the Amifile
        under final ``key``, told before the full path's look-up, whatever changed since. A
        target whose look-ups lag (ec2's tag filters) may ask for it by id when its own
        look-up of ``key`` finds nothing; it must check the image is still that key's."""

    def confirm_memo(self, result: dict, facts: dict) -> bool:
        """For ``fast_rebuild``: True if the recorded ``result`` (``BuildResult.to_json()``)
        is still what a build would find. Called on a memo hit, before the full path;
        False (any doubt) makes the full build run. The local target's memo needs no
        confirmation (its ``memo_paths`` cover everything)."""
        return True

    def build_lock(self) -> contextlib.AbstractContextManager[None]:
        """Held for the whole of a build (the local target uses it to keep prune away)."""
        return contextlib.nullcontext()

    def lease(self, key: str, *, build_id: str = "?") -> contextlib.AbstractContextManager[object]:
        """Held while this build may make the image of ``key``: another build (on this machine
        or, for a shared cache, anywhere) asking for the same key waits until it is let go,
        then finds the image. A holder that died must not block for ever (ec2: a heartbeat).
        The default: no lease."""
        return contextlib.nullcontext()

    def confirm_leases(self) -> list[str]:
        """Confirm the leases taken since the last call (ec2 reads them back in one call
        instead of one each); the keys whose lease turned out to be another build's (the
        engine lets go of its leases and starts over). The default: every lease is sure."""
        return []

    def remove_superseded(self) -> list[str]:
        """After a ``--no-cache`` build (its build lock let go): remove the images its
        snapshots replaced under their keys, if that is safe now; return notes for the user.
        The default: nothing (a target whose keys name one image each, or prune's job)."""
        return []

    def remove_image(self, image: Image) -> None:
        """Delete an image and what only it uses (snapshots, layer dirs)."""
        raise NotImplementedError(f"the {self.name} target cannot remove images")
