"""The upload's snapshot started while the disk is made (``--bake local``).

StartSnapshot needs only the volume's size and the parent snapshot. When the disk is the
project's kept previous disk changed in place (``disk_reuse``), its size is known before
the disk step runs: a reused disk keeps its size. So the EBS client (~0.2 s of botocore
loading its model), the parent's look-up (``ebs_image.previous``, a DescribeSnapshots) and
StartSnapshot (a round trip to EBS) run in a thread beside the disk step, whose main thread
only waits on subprocesses meanwhile (no contest for the GIL), and leave the build's
critical path. A disk that comes out another size (made afresh, bigger) has the early
snapshot deleted and the upload starts its own, as without a kept disk.

Lifetimes: the snapshot is tagged at creation as any upload's (``amic:role=upload``, the
owner, the expiry: ``amic gc`` finds it after a kill -9). It is :class:`Early`'s until the
upload enters the context manager :meth:`Early.take` gives it (then the upload's, deleted
by ``ebs_upload.upload`` unless completed); leaving the :func:`beside` block before that, by
an error in the disk step, an error raised by the thread, Ctrl-C or a disk of another size,
deletes it. A StartSnapshot still in flight then is waited for; should that wait be
interrupted too, the thread (not a daemon: the interpreter waits for it at exit) deletes
the snapshot it gets. An error in the thread is raised where the snapshot is taken, not in
the disk step: the error the upload would have met starting it.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping

from amic.targets.ec2 import block_manifest as bm
from amic.targets.ec2 import disk_reuse, ebs_image
from amic.targets.ec2 import ebs_upload as up

Log = Callable[[str], None]


class Warm:
    """A client made by ``make`` in a thread of its own, from now on: a build's EBS client is
    made while its layers run (the main thread then mostly waits on the root's commands),
    not at the upload (~0.2 s of botocore loading its model). Not a daemon: a build that
    fails first waits those tenths of a second at exit rather than have the interpreter
    stop a thread in the middle of loading modules."""

    def __init__(self, make: Callable[[], object]) -> None:
        self._make = make
        self._client: object = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        threading.Thread(target=self._run, name="ebs-client").start()

    def _run(self) -> None:
        try:
            self._client = self._make()
        except BaseException as exc:  # noqa: BLE001 - raised where the client is asked for
            self._error = exc
        finally:
            self._done.set()

    def __call__(self) -> object:
        self._done.wait()
        if self._error is not None:
            raise self._error
        return self._client


def kept_volume_gib(store, project: str) -> int | None:
    """The volume (GiB) of the next disk when it will be ``project``'s kept disk changed in
    place: the kept disk's; None without one, or when it is so full that the disk will be
    made afresh (``disk_reuse.FILL_LIMIT``). A guess that turns out wrong costs a snapshot
    started and deleted, nothing else (:meth:`Early.take` checks the disk made)."""
    kept = disk_reuse.kept_dir(store, project)
    try:
        facts = json.loads((kept / "disk.json").read_text())
        size = (kept / "disk.raw").stat().st_size
        root_kib = int(facts["root_mib"]) * 1024
        full = int(facts.get("used_kib", 0)) >= disk_reuse.FILL_LIMIT * root_kib
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return None if full else bm.volume_gib(size)


class Early:
    """A snapshot for a disk of ``volume_gib`` GiB, started by a thread of its own."""

    def __init__(self, make_ebs: Callable[[], object], ec2, *, volume_gib: int,
                 tags: Mapping[str, str], build_id: str, description: str,
                 snapshot_tags: Mapping[str, str] | None = None) -> None:
        self.ec2 = ec2
        self.volume_gib = volume_gib
        self.ebs = None
        self.parent: bm.Manifest | None = None
        self.snapshot_id: str | None = None
        """Set once started, while the block runs; None again once handed over or deleted."""
        self.error: BaseException | None = None
        self._lines: list[str] = []
        """The thread's log lines, said by the main thread (the build's log is not shared)."""
        self._left = threading.Event()
        """The block was left: a snapshot the thread gets from now on is the thread's to
        delete (and a retry's pause ends)."""
        self._lock = threading.Lock()
        self._began = self.asked = 0.0
        """When the thread began, when it asked EBS to start the snapshot (monotonic)."""
        # the tags and description as the upload itself would start it with (publish)
        args = dict(tags=ebs_image.upload_tags(tags if snapshot_tags is None else snapshot_tags,
                                               build_id), description=description,
                    line=ebs_image.lineage(tags), make_ebs=make_ebs)
        self._thread = threading.Thread(target=self._start, kwargs=args, name="ebs-early")

    def start(self) -> None:
        self._began = time.monotonic()
        self._thread.start()

    def _start(self, *, make_ebs, line, tags, description) -> None:
        try:
            self.ebs = make_ebs()
            self.parent = ebs_image.previous(self.ec2, line, self.volume_gib)
            self.asked = time.monotonic()
            snap = up.start_snapshot(self.ebs, volume_gib=self.volume_gib, tags=tags,
                                     description=description, stop=self._left,
                                     parent=self.parent.snapshot_id if self.parent else None,
                                     log=self._lines.append)
        except BaseException as exc:  # noqa: BLE001 - raised in the main thread (take)
            self.error = exc
            return
        with self._lock:
            if not self._left.is_set():
                self.snapshot_id = snap
                return
        up.delete_quietly(self.ec2, snap, self._lines.append)

    def wait(self, log: Log | None = None):
        """The thread's end (its log lines said here); the EBS client it made, if any."""
        if self._thread.ident is not None:
            self._thread.join()
        lines, self._lines = self._lines, []
        for line in lines if log is not None else ():
            log(line)
        return self.ebs

    def take(self, volume_gib: int, log: Log | None = None
             ) -> tuple[bm.Manifest | None, contextlib.AbstractContextManager[str]] | None:
        """For a disk of ``volume_gib`` GiB: (the parent, the snapshot as a context manager
        that hands it over to the upload on entering it), or None when the snapshot was
        started for another size (deleted here: the upload starts its own). The thread's
        error, if it failed, is raised here."""
        self.wait(log)
        if volume_gib != self.volume_gib:
            snap = self._drop()
            if snap is not None:
                up.delete_quietly(self.ec2, snap, log)
                if log is not None:
                    log(f"deleted {snap}, started beside the disk step for a "
                        f"{self.volume_gib} GiB disk: this disk needs {volume_gib} GiB")
            return None
        if self.error is not None:
            raise self.error
        if log is not None:
            log(f"snapshot {self.snapshot_id} started beside the disk step (asked "
                f"{self.asked - self._began:.2f}s into it)")
        return self.parent, self._handed_over(log)

    @contextlib.contextmanager
    def _handed_over(self, log: Log | None) -> Iterator[str]:
        # owned_snapshot is entered before this object lets go of the id: an interrupt in
        # between has it deleted twice (the second attempt logged), never left behind
        with up.owned_snapshot(self.ec2, self.snapshot_id, log) as snap:
            self._drop()
            yield snap

    def _drop(self) -> str | None:
        """The snapshot id, no longer this object's to delete."""
        with self._lock:
            snap, self.snapshot_id = self.snapshot_id, None
            return snap

    def close(self, log: Log | None = None) -> None:
        """The block is left: a snapshot not handed over is deleted (one still being started,
        by the thread once it has it)."""
        with self._lock:
            self._left.set()
            snap, self.snapshot_id = self.snapshot_id, None
        if snap is not None:
            up.delete_quietly(self.ec2, snap, log)
        self.wait(log)


@contextlib.contextmanager
def beside(make_ebs: Callable[[], object], ec2, *, volume_gib: int | None,
           tags: Mapping[str, str], build_id: str, description: str,
           log: Log | None = None,
           snapshot_tags: Mapping[str, str] | None = None) -> Iterator[Early | None]:
    """The image's snapshot (``tags``, ``snapshot_tags``: the image's and its snapshot's, as
    ``ebs_image.publish`` gets them) for a disk of ``volume_gib`` GiB started in a thread
    while the block runs; deleted when the block is left unless the upload took it
    (:meth:`Early.take`). ``volume_gib`` None (not known before the disk is made): nothing
    is started, None is given."""
    if volume_gib is None:
        yield None
        return
    early = Early(make_ebs, ec2, volume_gib=volume_gib, tags=tags, build_id=build_id,
                  description=description, snapshot_tags=snapshot_tags)
    try:
        early.start()
        yield early
    finally:
        early.close(log)
