"""A raw disk written to an EBS snapshot with the EBS direct APIs: no instance, no SSH.

StartSnapshot (tagged at creation), PutSnapshotBlock of each block to send from a bounded
thread pool (each worker its own connection: "Is each thread using a separate
connection?", EBS User Guide, "Optimize performance for EBS direct APIs"), CompleteSnapshot
with the block count and the LINEAR aggregate checksum, then a wait for ``completed``
(CompleteSnapshot answers ``pending`` and seals the snapshot asynchronously; RegisterImage
needs it completed, as Bottlerocket's pubsys and ``coldsnap upload --wait`` wait). A
snapshot of the same project uploaded before is the parent (``ParentSnapshotId``) when its block manifest is kept here
(``block_manifest``): only the blocks whose hash differs are sent.

Throttling (``RequestThrottledException``) and server errors (5xx, a dropped connection)
are retried with exponential backoff and full jitter (``session.backoff``), as the
CompleteSnapshot reference asks ("You should always retry requests that receive server
(5xx) error responses, and ThrottlingException and RequestThrottledException client error
responses"). botocore's own retries are off for these calls so that the pool's backoff is
the only one.

Lifetimes: :func:`started_snapshot` deletes a snapshot that was started but never
completed, whatever stopped the upload (an error, Ctrl-C). A process killed outright
leaves a ``pending`` snapshot tagged ``amic:role=upload`` with its owner: ``amic gc``
finds it (``gc.survey``) and deletes it, and EBS turns it to ``error`` after the
StartSnapshot ``Timeout`` anyway.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

import attrs

from amic.errors import BuildError
from amic.targets.ec2 import block_manifest as bm
from amic.targets.ec2 import session as aws
from amic.targets.ec2 import waiters

ROLE_UPLOAD = "upload"
"""``amic:role`` of a snapshot being uploaded (a temporary resource until registered)."""
WORKERS = 16
"""Concurrent PutSnapshotBlock calls. At the ~100 ms per call AWS assumes, 16 connections
move ~160 blocks (80 MiB) a second; the per-snapshot quota is far above that."""
ATTEMPTS = 8
"""Tries of one call before the upload fails (with backoff between them)."""
TIMEOUT_MINUTES = 60
"""StartSnapshot ``Timeout``: EBS turns a snapshot not completed by then to ``error``."""
NEW_SNAPSHOT_PATIENCE = 150.0
"""Seconds after StartSnapshot during which "the snapshot does not exist" is waited out:
a new snapshot may refuse blocks as unknown for a while (awslabs/coldsnap#43, where the
EBS team advised waiting and retrying for up to about two minutes, coldsnap#56)."""
SEAL_POLL = 1.0
"""Seconds between DescribeSnapshots while a completed upload is sealed (coldsnap's
``wait`` asks every 2 s; a wait this short costs one cheap Describe call a second and
ends within a second of the seal); ``--poll-interval`` when that is shorter."""
SEAL_TIMEOUT = 3600.0
"""How long a sealed snapshot may stay ``pending`` before the build fails (the StartSnapshot
``Timeout`` has no say once CompleteSnapshot is accepted)."""
RETRIED = ("RequestThrottledException", "ThrottlingException", "InternalServerException",
           "ServiceUnavailable", "ServiceUnavailableException", "RequestTimeout")

Progress = Callable[["UploadProgress"], None]


@attrs.frozen
class UploadProgress:
    sent_bytes: int
    total_bytes: int
    seconds: float
    retries: int

    @property
    def rate(self) -> float:
        """Bytes a second so far."""
        return self.sent_bytes / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        mib = 1024 * 1024
        return (f"upload: {self.sent_bytes / mib:.0f}/{self.total_bytes / mib:.0f} MiB, "
                f"{self.rate / mib:.1f} MiB/s" + (f", {self.retries} retried" if self.retries
                                                  else ""))


@attrs.frozen
class Uploaded:
    snapshot_id: str
    manifest: bm.Manifest
    parent: str | None
    blocks_sent: int
    blocks_total: int
    """Non-zero blocks of the disk."""
    seconds: float
    retries: int


def ebs_client(opts: aws.AwsOptions, workers: int = WORKERS):
    """An ``ebs`` client with a connection per worker and botocore's retries off (the
    upload's own backoff retries; ``AWS_ENDPOINT_URL_EBS`` is read by botocore)."""
    from botocore.config import Config

    from amic import __version__

    sess = aws.session(opts)
    config = Config(retries={"mode": "standard", "total_max_attempts": 1},
                    max_pool_connections=workers, connect_timeout=opts.connect_timeout,
                    read_timeout=opts.read_timeout, user_agent_extra=f"amic/{__version__}")
    return sess.client("ebs", config=config, region_name=sess.region_name)


def retrying(doing: str, fn, *, stop: threading.Event | None = None,
             on_retry: Callable[[], None] | None = None, unknown_until: float = 0.0,
             **kwargs):
    """``fn(**kwargs)``, retried on throttling and server errors; a BuildError at the end.
    Until ``unknown_until`` (``time.monotonic``), ResourceNotFoundException is waited out
    too, without using up the attempts: the snapshot was just started."""
    import botocore.exceptions

    attempt = waits = 0
    while True:
        attempt += 1
        try:
            return fn(**kwargs)
        except botocore.exceptions.ClientError as exc:
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = aws.error_code(exc)
            if code == "ResourceNotFoundException" and time.monotonic() < unknown_until:
                attempt -= 1                 # not a failure of this call: waited out
                waits += 1
            elif not (code in RETRIED or status >= 500) or attempt == ATTEMPTS:
                raise aws.explain(exc, doing) from None
        except (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError) as exc:
            if attempt == ATTEMPTS:
                raise aws.explain(exc, doing) from None
        if on_retry is not None:
            on_retry()
        pause = aws.backoff(max(attempt, min(waits, 3)))   # at most ~4 s while waiting it out
        if stop is not None and stop.wait(pause):
            raise BuildError(f"{doing}: stopped")
        if stop is None:
            time.sleep(pause)


def delete_quietly(ec2, snapshot_id: str, log: Callable[[str], None] | None) -> None:
    """DeleteSnapshot of an upload that did not finish; a failure is logged (gc finds it)."""
    try:
        ec2.delete_snapshot(SnapshotId=snapshot_id)
    except Exception as exc:  # noqa: BLE001 - cleanup must not hide the first error
        if log is not None:
            log(f"could not delete unfinished snapshot {snapshot_id} ({exc}); amic gc will")


def start_snapshot(ebs, *, volume_gib: int, tags: Mapping[str, str], description: str,
                   parent: str | None = None, client_token: str | None = None,
                   stop: threading.Event | None = None,
                   log: Callable[[str], None] | None = None) -> str:
    """StartSnapshot, tagged at creation (``amic gc`` finds it after a kill); the caller
    deletes it if it is never completed (:func:`owned_snapshot`)."""
    kept, dropped = aws.fit_tags(tags, keep_prefixes=("amic:",))
    if dropped and log is not None:
        log(f"snapshot tags over EC2's limit left out: {', '.join(dropped)}")
    args = {"VolumeSize": volume_gib, "Tags": aws.tag_list(kept), "Description": description,
            "Timeout": TIMEOUT_MINUTES}
    if parent:
        args["ParentSnapshotId"] = parent
    if client_token:
        args["ClientToken"] = client_token
    return retrying("starting an EBS snapshot", ebs.start_snapshot, stop=stop,
                    **args)["SnapshotId"]


@contextlib.contextmanager
def owned_snapshot(ec2, snapshot_id: str, log: Callable[[str], None] | None = None
                   ) -> Iterator[str]:
    """``snapshot_id``, deleted if the block leaves by any exception (Ctrl-C included):
    the block completes it or it goes."""
    try:
        yield snapshot_id
    except BaseException:
        delete_quietly(ec2, snapshot_id, log)
        raise


@contextlib.contextmanager
def started_snapshot(ebs, ec2, *, volume_gib: int, tags: Mapping[str, str], description: str,
                     parent: str | None = None, client_token: str | None = None,
                     log: Callable[[str], None] | None = None) -> Iterator[str]:
    """StartSnapshot; the snapshot is deleted if the block leaves by any exception
    (Ctrl-C included) before it is completed."""
    snap = start_snapshot(ebs, volume_gib=volume_gib, tags=tags, description=description,
                          parent=parent, client_token=client_token, log=log)
    with owned_snapshot(ec2, snap, log):
        yield snap


class _Sender:
    """The pool's shared state: counts, the stop flag, progress reports."""

    def __init__(self, ebs, snap: str, fd: int, total: int, progress: Progress | None,
                 unknown_until: float) -> None:
        self.ebs, self.snap, self.fd, self.total = ebs, snap, fd, total
        self.unknown_until = unknown_until
        self.progress = progress
        self.stop = threading.Event()
        self.sent = self.retries = 0
        self.t0 = time.monotonic()
        self._last = 0.0
        self._lock = threading.Lock()

    def retried(self) -> None:
        with self._lock:
            self.retries += 1

    def put(self, index: int, digest: str) -> None:
        if self.stop.is_set():
            return
        data = bm.read_block(self.fd, index)
        checksum = base64.b64encode(bytes.fromhex(digest)).decode()
        if hashlib.sha256(data).hexdigest() != digest:
            raise BuildError(f"block {index} of the disk changed during the upload")
        retrying(f"writing block {index} of {self.snap}", self.ebs.put_snapshot_block,
                 stop=self.stop, on_retry=self.retried, unknown_until=self.unknown_until,
                 SnapshotId=self.snap, BlockIndex=index,
                 BlockData=data, DataLength=bm.BLOCK_SIZE, Checksum=checksum,
                 ChecksumAlgorithm="SHA256",
                 Progress=min(100, (self.sent + 1) * 100 // max(1, self.total)))
        with self._lock:
            self.sent += 1
            now = time.monotonic()
            report = self.progress is not None and (now - self._last >= 0.5
                                                    or self.sent == self.total)
            if report:
                self._last = now
        if report:
            self.report()

    def report(self) -> None:
        if self.progress is not None:
            self.progress(UploadProgress(self.sent * bm.BLOCK_SIZE, self.total * bm.BLOCK_SIZE,
                                         time.monotonic() - self.t0, self.retries))


def aggregate_checksum(digests: list[str]) -> str:
    """LINEAR aggregation: SHA-256 over the written blocks' SHA-256s in block index order."""
    whole = hashlib.sha256(b"".join(bytes.fromhex(d) for d in digests))
    return base64.b64encode(whole.digest()).decode()


def upload(ebs, ec2, disk: Path, *, tags: Mapping[str, str], description: str,
           parent: bm.Manifest | None = None, workers: int = WORKERS,
           progress: Progress | None = None, log: Callable[[str], None] | None = None,
           on_started: Callable[[str], None] | None = None,
           started: contextlib.AbstractContextManager[str] | None = None,
           new_snapshot_patience: float = NEW_SNAPSHOT_PATIENCE,
           seal_poll: float = SEAL_POLL, seal_timeout: float = SEAL_TIMEOUT) -> Uploaded:
    """Write ``disk`` (a raw disk image) to a new completed snapshot; its manifest is saved.

    ``parent``: the manifest of an earlier snapshot of the same project; the new one starts
    from it and only the changed blocks are sent. ``on_started(snapshot_id)`` runs once the
    snapshot exists (a heartbeat adds it). ``started``: a snapshot already started for this
    disk over ``parent`` (``ebs_early``), handed over on entering it: from then on the
    upload's, deleted like one it started if the upload does not complete it."""
    t0 = time.monotonic()
    blocks = bm.scan(disk)
    gib = bm.volume_gib(os.stat(disk).st_size)
    if parent is not None and parent.volume_gib > gib:
        gib = parent.volume_gib              # a child is never smaller than its parent
    todo = bm.changed(blocks, parent)
    fd = os.open(disk, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        if started is None:
            started = started_snapshot(ebs, ec2, volume_gib=gib, tags=tags,
                                       description=description,
                                       parent=parent.snapshot_id if parent else None, log=log)
        with started as snap:
            unknown_until = time.monotonic() + new_snapshot_patience
            if on_started is not None:
                on_started(snap)
            sender = _Sender(ebs, snap, fd, len(todo), progress, unknown_until)
            zero_digest = hashlib.sha256(bm.ZERO).hexdigest()
            digests = {i: blocks.get(i, zero_digest) for i in todo}
            pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="ebs-put")
            try:
                futures = [pool.submit(sender.put, i, digests[i]) for i in todo]
                done, _ = wait(futures, return_when=FIRST_EXCEPTION)
                failed = next((f for f in done if f.exception() is not None), None)
                if failed is not None:
                    raise failed.exception()
            finally:
                sender.stop.set()        # Ctrl-C or an error: no new block starts
                pool.shutdown(wait=True, cancel_futures=True)
            sender.report()
            retrying(f"completing {snap}", ebs.complete_snapshot, SnapshotId=snap,
                     unknown_until=unknown_until,
                     ChangedBlocksCount=len(todo),
                     Checksum=aggregate_checksum([digests[i] for i in todo]),
                     ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
            # inside the block: a snapshot that turns ``error`` or outlasts the wait, or a
            # Ctrl-C now, is deleted like one never completed
            waiters.snapshot_completed(ec2, [snap], timeout=seal_timeout,
                                       poll_interval=seal_poll, doing=f"sealing {snap}")
    finally:
        os.close(fd)
    manifest = bm.Manifest(snap, gib, blocks)
    bm.save(manifest)
    return Uploaded(snap, manifest, parent.snapshot_id if parent else None, len(todo),
                    len(blocks), time.monotonic() - t0, sender.retries)
