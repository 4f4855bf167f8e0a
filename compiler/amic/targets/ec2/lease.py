"""Leases: one build per layer key at a time, across machines, with nothing but EC2.

A lease is a key pair named ``amic-lease-<layer key[:32]>``. Key pair names are
unique per account and region and CreateKeyPair fails with
``InvalidKeyPair.Duplicate`` when the name exists: creating it is the atomic
test-and-set. It is tagged at creation (``amic:tool``, ``amic:build-id``,
``amic:role=lease``, ``amic:key``, ``amic:expires`` = now + ``TTL``,
``amic:heartbeat``, ``amic:owner``); the holder refreshes the heartbeat (and the
expiry) every ``heartbeat_seconds()`` while it holds the lease and deletes the
key pair when it lets go. Its private half is never kept: nobody logs in with it.

A build that finds the lease taken waits (reading it, with pauses growing to
``MAX_POLL``, bounded by ``WAIT_LIMIT``) while the holder lives, and reports whom
it waits for. A lease whose holder is dead is taken over: at once when the
holder ran on this host (its ``amic:owner`` process is gone, see ``owner``; a
waiter watches it between reads), once its heartbeat stopped (``STALE_BEATS``
intervals) when it ran elsewhere. It is deleted *by the KeyPairId that was seen
stale* (so two waiters cannot delete each other's fresh lease) and created
again; the winner is whoever's CreateKeyPair succeeded, confirmed by reading the
lease back. A lease created at the first try (no holder seen) may have its read-back
deferred (``pending``): the build reads all of those back in one DescribeKeyPairs
(``confirm``, a ``key-name`` filter with every name) before it relies on them, and
starts over when one turns out another build's. ``amic gc`` lists a dead build's lease
like its other resources (role ``lease``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import time
from collections.abc import Iterator

from amic.contract import TAG_BUILD, TAG_KEY
from amic.errors import BuildError
from amic.targets.ec2 import owner, resources
from amic.targets.ec2 import session as aws

PREFIX = "amic-lease-"
ROLE = "lease"
TTL = dt.timedelta(minutes=10)
"""``amic:expires`` of a lease; the heartbeat pushes it forward while the holder lives."""
WAIT_LIMIT = 6 * 3600.0
"""Seconds a build waits for another live build's lease before giving up."""
LOCAL_POLL = 0.2
"""How often a waiting build looks at a holder on this host (a ``kill(pid, 0)`` and one
``/proc`` read: no API call)."""
MAX_POLL = 10.0
"""The longest pause between two looks at a lease held by a live build (the pause grows
from ``poll`` by half each time: a wait of hours costs a few hundred reads, not 20,000)."""


def lease_name(key: str) -> str:
    return PREFIX + key[:32]


def _client_error():
    import botocore.exceptions

    return botocore.exceptions.ClientError


def describe(ec2, name: str) -> dict | None:
    """The lease key pair (``KeyPairId``, tags as a dict under ``tags``), or None."""
    try:
        pairs = ec2.describe_key_pairs(KeyNames=[name])["KeyPairs"]
    except _client_error() as exc:
        if aws.error_code(exc) == "InvalidKeyPair.NotFound":
            return None
        raise
    if not pairs:
        return None
    return {**pairs[0], "tags": aws.tag_dict(pairs[0].get("Tags"))}


def try_create(ec2, name: str, key: str, build_id: str, interval: float, *,
               read_back: bool = True) -> str | None:
    """Create the lease; its KeyPairId if this build holds it now, None if another does
    (without ``read_back``: if CreateKeyPair succeeded; ``confirm`` reads it back later)."""
    tags = aws.resource_tags(build_id, ttl=TTL, role=ROLE,
                             extra={TAG_KEY: key, **resources.heartbeat_tags(interval)})
    tags["Name"] = name
    try:
        reply = ec2.create_key_pair(KeyName=name, KeyType="ed25519",
                                    TagSpecifications=aws.tag_specs(tags, "key-pair"))
    except _client_error() as exc:
        if aws.error_code(exc) == "InvalidKeyPair.Duplicate":
            return None
        raise
    mine = reply["KeyPairId"]
    if not read_back:
        return mine
    for _ in range(20):     # read back (eventual consistency: it may not show at once)
        seen = describe(ec2, name)
        if seen is not None:
            return mine if seen["KeyPairId"] == mine else None
        time.sleep(0.2)
    return mine


def confirm(ec2, held: dict[str, str], *, tries: int = 20, pause: float = 0.2) -> set[str]:
    """Read back the leases ``held`` (name -> the KeyPairId this build's CreateKeyPair
    answered) in one DescribeKeyPairs; the names whose lease is another KeyPairId.

    A ``key-name`` filter, not ``KeyNames``: a name not visible yet (eventual consistency)
    is left out of the answer instead of failing the call; those are asked again, and
    after ``tries`` taken as ours (as ``try_create`` does)."""
    lost: set[str] = set()
    left = dict(held)
    for attempt in range(tries):
        if attempt:
            time.sleep(pause)
        names = sorted(left)
        seen: dict[str, str] = {}
        for i in range(0, len(names), 200):    # EC2's limit of values in one filter
            reply = aws.call("reading back the leases", ec2.describe_key_pairs,
                             Filters=[{"Name": "key-name", "Values": names[i:i + 200]}])
            seen.update({p["KeyName"]: p["KeyPairId"] for p in reply["KeyPairs"]})
        for name in [n for n in left if n in seen]:
            if seen[name] != left.pop(name):
                lost.add(name)
        if not left:
            break
    return lost


def stale(found: dict, at: dt.datetime) -> str | None:
    """Why a lease may be taken over (its holder on this host is gone, its holder elsewhere
    stopped beating, or it expired), or None."""
    tags = found["tags"]
    alive, how = resources.build_alive(tags, at)
    if alive is False:
        return how
    if alive is None:     # no heartbeat: not one of ours, or a half-made one
        expires = aws.parse_iso(tags.get(aws.TAG_EXPIRES))
        if expires is None or expires <= at:
            return "expired"
    return None


def pause(seconds: float, tags: dict) -> None:
    """Wait ``seconds`` before the next read of the lease; a holder on this host is watched
    meanwhile (no API call) and its death ends the wait at once."""
    end = time.monotonic() + seconds
    while True:
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, LOCAL_POLL))
        if owner.on_this_host(tags)[0] is False:
            return


def delete(ec2, key_pair_id: str) -> None:
    try:
        ec2.delete_key_pair(KeyPairId=key_pair_id)
    except _client_error() as exc:
        if aws.error_code(exc) != "InvalidKeyPair.NotFound":
            raise


def drop_if_ours(ec2, name: str, build_id: str, log) -> None:
    """Delete the lease ``name`` if this build made it (found by its build tag)."""
    try:
        found = describe(ec2, name)
        if found is not None and found["tags"].get(TAG_BUILD) == build_id:
            delete(ec2, found["KeyPairId"])
    except Exception as exc:  # noqa: BLE001 - cleanup logs; the lease goes stale in 3 beats
        log(f"warning: could not check the lease {name}: {exc} (it goes stale by itself)")


@contextlib.contextmanager
def lease(ec2, key: str, build_id: str, *, log, poll: float = 1.0,
          wait_limit: float = WAIT_LIMIT, on_contention=None,
          pending: dict[str, str] | None = None) -> Iterator[str]:
    """Hold the lease of ``key`` for the ``with`` block (waiting or taking over as needed);
    ``on_contention()`` is called each time another build had it (CreateKeyPair: duplicate).

    With ``pending``, a lease created at the first try is not read back here: its name and
    KeyPairId go into ``pending`` (until the block ends) for the caller's ``confirm``. One
    created after a holder was seen (waited for, taken over) is read back at once: that is
    when two builds race for it."""
    name = lease_name(key)
    interval = resources.heartbeat_seconds()
    poll = max(0.1, min(poll, interval))
    deadline = time.monotonic() + wait_limit
    told: str | None = None
    held_by_other = False       # seen held by a live build: only read until it is gone
    first = pending is not None     # no holder seen yet: the read-back may be deferred
    while True:
        if not held_by_other:
            try:
                mine = aws.call(f"taking the lease {name}",
                                lambda: try_create(ec2, name, key, build_id, interval,
                                                   read_back=not first))
            except BaseException:
                # Ctrl-C (or an error) while CreateKeyPair was on the wire: the lease may
                # exist without this build knowing its id; it is ours if it has our build id.
                drop_if_ours(ec2, name, build_id, log)
                raise
            if mine is not None:
                break
            first = False
            if on_contention is not None:   # held by another build, or let go of just now
                on_contention()
        found = aws.call(f"reading the lease {name}", lambda: describe(ec2, name))
        held_by_other = found is not None
        if found is None:      # let go of just now, or not readable yet (eventual
            time.sleep(min(poll, 0.2))      # consistency): try again, not in a hot loop
            continue
        holder = found["tags"].get(TAG_BUILD, "?")
        why = stale(found, aws.now())
        if why:
            log(f"lease {name} of build {holder}: {why}; taking it over")
            aws.call(f"removing the stale lease {name}",
                     lambda: delete(ec2, found["KeyPairId"]))
            held_by_other = False
            continue
        if told != holder:
            log(f"waiting for build {holder} (lease {name}, layer key {key[:12]}; "
                f"{owner.describe(found['tags'])})")
            told = holder
        if time.monotonic() > deadline:
            raise BuildError(f"gave up after {wait_limit:.0f}s waiting for build {holder} "
                             f"(lease {name}); if that build is dead, `amic gc` removes its lease")
        pause(poll, found["tags"])
        poll = min(poll * 1.5, MAX_POLL)
    if first:
        pending[name] = mine
    beat = resources.Heartbeat(ec2, log, interval=interval, ttl=TTL)
    beat.add(mine)
    beat.start()
    try:
        yield name
    finally:
        if pending is not None and pending.get(name) == mine:
            del pending[name]
        beat.stop()
        resources.cleanup_quietly(log, "lease", name, delete, ec2, mine)
