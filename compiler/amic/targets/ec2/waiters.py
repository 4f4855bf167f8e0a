"""Waiters that survive EC2's eventual consistency.

botocore's own waiters give up too early for a build: ``ImageAvailable`` fails
on ``InvalidAMIID.NotFound``, which EC2 answers for a while right after
CreateImage/RegisterImage (Packer's long-standing "AMI not found" failures,
docs/ec2.md names the threads), ``InstanceTerminated``
fails when it sees ``stopping``, and a throttled Describe ends the wait. Here
every wait polls one Describe call until a state is reached, and retries,
within the same timeout,

- ``*.NotFound`` codes (the resource was just created and is not visible yet),
- throttling (``RequestLimitExceeded``, ``Throttling``…),
- any transitional state (``pending``, ``stopping``, ``shutting-down``…).

Only a terminal state that can never become the wanted one (``failed``, an
instance ``terminated`` while waiting for ``running``) or the timeout end it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from amic.errors import BuildError

RETRY_CODES = frozenset({"RequestLimitExceeded", "Throttling", "ThrottlingException",
                         "RequestThrottled", "ServiceUnavailable", "Unavailable",
                         "InternalError", "InternalFailure"})
"""Error codes that mean "ask again", besides any ``*.NotFound``."""


def _code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return response.get("Error", {}).get("Code")
    return None


def retryable(exc: BaseException) -> bool:
    """True for an error a waiter asks again after: NotFound just after create, throttling."""
    import botocore.exceptions

    if isinstance(exc, (botocore.exceptions.EndpointConnectionError,
                        botocore.exceptions.ConnectionClosedError)):
        return True
    code = _code(exc) or ""
    return code.endswith(".NotFound") or code.endswith("NotFound") or code in RETRY_CODES


def poll(read: Callable[[], list[str | None]], *, want: str, fail: Iterable[str] = (),
         timeout: float, poll_interval: float, doing: str,
         sleep: Callable[[float], None] = time.sleep) -> None:
    """Call ``read`` (the states of the resources waited for) until all are ``want``.

    A missing resource (None, an empty answer, a NotFound error) and throttling are
    retried; a state in ``fail`` raises at once; the timeout raises BuildError.
    """
    import botocore.exceptions

    fail = frozenset(fail)
    deadline = time.monotonic() + timeout
    delay = max(poll_interval, 0.05)
    last = "no answer yet"
    while True:
        try:
            states = read()
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            if not retryable(exc):
                raise BuildError(f"{doing}: {exc}") from None
            last = f"{_code(exc) or type(exc).__name__} (retried)"
        else:
            bad = sorted({s for s in states if s in fail})
            if bad:
                raise BuildError(f"{doing}: state {', '.join(bad)}")
            if states and all(s == want for s in states):
                return
            last = ", ".join(str(s) for s in states) or "not found yet"
        if time.monotonic() + delay > deadline:
            raise BuildError(f"{doing}: not {want} after {timeout:.0f}s (last: {last})")
        sleep(delay)


def _keyed(found: dict[str, str], ids: list[str]) -> list[str | None]:
    return [found.get(i) for i in ids]


def image_available(ec2, image_ids: list[str], *, timeout: float, poll_interval: float,
                    doing: str) -> dict[str, dict]:
    """Wait until the images are available; their DescribeImages entries, by id (the last
    answer: the caller need not ask again)."""
    last: dict[str, dict] = {}

    def read():
        reply = ec2.describe_images(ImageIds=list(image_ids))["Images"]
        last.clear()
        last.update({i["ImageId"]: i for i in reply})
        return _keyed({i["ImageId"]: i.get("State") for i in reply}, image_ids)

    poll(read, want="available", fail=("failed", "error", "invalid", "deregistered"),
         timeout=timeout, poll_interval=poll_interval, doing=doing)
    return dict(last)


def snapshot_completed(ec2, snapshot_ids: list[str], *, timeout: float, poll_interval: float,
                       doing: str) -> None:
    def read():
        reply = ec2.describe_snapshots(SnapshotIds=list(snapshot_ids))["Snapshots"]
        return _keyed({s["SnapshotId"]: s.get("State") for s in reply}, snapshot_ids)

    poll(read, want="completed", fail=("error",), timeout=timeout,
         poll_interval=poll_interval, doing=doing)


def instance_state(ec2, ids: list[str], want: str, *, timeout: float, poll_interval: float,
                   doing: str) -> dict[str, dict]:
    """``running``, ``stopped`` or ``terminated``; ``stopping``/``shutting-down`` are waited
    through; an instance that ends up terminated fails every other wait. Returns the
    instances' DescribeInstances entries, by id, from the answer that ended the wait (its
    addresses and volumes: no second Describe for them)."""
    fail = {"running": ("terminated", "shutting-down"),   # "stopped": just after StartInstances
            "stopped": ("terminated", "shutting-down"),
            "terminated": ()}[want]
    last: dict[str, dict] = {}

    def read():
        reply = ec2.describe_instances(InstanceIds=list(ids))["Reservations"]
        last.clear()
        last.update({i["InstanceId"]: i for r in reply for i in r["Instances"]})
        return _keyed({iid: i["State"]["Name"] for iid, i in last.items()}, ids)

    poll(read, want=want, fail=fail, timeout=timeout, poll_interval=poll_interval, doing=doing)
    return dict(last)
