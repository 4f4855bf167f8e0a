"""The EBS direct API stand-in's data: snapshots, errors as the API names them, rate buckets.

Part of the fake EC2 ``tests/harness/ec2/`` (``ebs.py`` serves the calls)."""

from __future__ import annotations

import json
import re
import time

import attrs

BLOCK_SIZE = 524288
BLOCKS_PER_GIB = 1024 ** 3 // BLOCK_SIZE


class EbsError(Exception):
    def __init__(self, kind: str, status: int, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.kind, self.status, self.message, self.reason = kind, status, message, reason


def invalid(message: str, reason: str = "INVALID_PARAMETER_VALUE") -> EbsError:
    return EbsError("ValidationException", 400, message, reason)


def not_found(snap: str) -> EbsError:
    return EbsError("ResourceNotFoundException", 404, f"The snapshot '{snap}' does not exist.",
                    "SNAPSHOT_NOT_FOUND")


WRITE_LAG = 0.5
"""Seconds a new snapshot refuses writes as unknown. Short, so every upload in the suite
meets the refusal and must wait it out; a test sets it longer (AWS: up to ~2 minutes)."""

SEAL_SECONDS = 0.3
"""Seconds from CompleteSnapshot (answered ``pending``, as AWS answers) to ``completed``,
which RegisterImage and the listings need: every upload here must wait for it."""


@attrs.define
class Snap:
    id: str
    volume_size: int
    parent: str | None
    tags: list[dict]
    description: str
    start: float
    deadline: float
    status: str = "pending"
    completes_at: float | None = None
    """Set by CompleteSnapshot (sealed: no more writes); ``completed`` from then on."""
    blocks: dict[int, str] = attrs.Factory(dict)
    """Index -> SHA-256 hex of the blocks written to this snapshot (not its parents')."""

    def advance(self, now: float) -> str:
        """The status at ``now``: a sealed snapshot completes when its seal ends, one never
        completed turns ``error`` after its StartSnapshot ``Timeout``."""
        if self.status == "pending":
            if self.completes_at is not None:
                if now >= self.completes_at:
                    self.status = "completed"
            elif now > self.deadline:
                self.status = "error"
        return self.status


class Bucket:
    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


def check_signed(headers) -> None:
    """A SigV4 signature for the ``ebs`` service, or AccessDeniedException."""
    auth = headers.get("Authorization", "")
    if not re.search(r"Credential=[^/]+/\d{8}/[^/]+/ebs/aws4_request", auth):
        raise EbsError("AccessDeniedException", 403, "Request not signed for ebs",
                       "UNAUTHORIZED_ACCOUNT")


def start_request(action: str, body: bytes) -> dict:
    """StartSnapshot's JSON body (what its condition keys come from); {} otherwise."""
    if action != "StartSnapshot":
        return {}
    try:
        req = json.loads(body or b"{}")
    except ValueError:
        raise invalid("request body is not JSON") from None
    return req if isinstance(req, dict) else {}
