"""Who owns a build's resources, and whether that owner still runs (when it can be known).

Every resource a build creates carries ``amic:owner``: the process that made it,
as ``machine=<machine> boot=<boot id> pidns=<pid namespace> pid=<pid>
start=<start time> host=<hostname>``, where ``machine`` is a keyed hash of
``/etc/machine-id`` (which machine-id(5) asks not to expose as it is). The start
time is field 22 of ``/proc/<pid>/stat`` (clock ticks after boot), so a pid the
kernel has given to another process since is not mistaken for the owner.

On the machine (and boot, and pid namespace) that made a resource, the owner's
death is known at once: its pid is gone, a zombie, or another process now.
``amic gc`` and a build waiting on a lease act on that without waiting for the
heartbeat to go stale. Anywhere else (another host, another container with its
own pid namespace, a reboot since) nothing can be known from here, and the
heartbeat decides as before. Where this process cannot tell (``/proc`` hidden,
unreadable), the owner counts as running: a live build's resources are never
taken for leaked on a guess.

:func:`liveness` is the decision, pure; :func:`current` and :func:`look` read
``/proc``; :func:`on_this_host` puts them together for a resource's tags.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import socket
from collections.abc import Mapping

import attrs

TAG_OWNER = "amic:owner"
MACHINE_ID = "/etc/machine-id"
BOOT_ID = "/proc/sys/kernel/random/boot_id"


@attrs.frozen
class Owner:
    machine: str
    boot: str
    pidns: str
    pid: int
    start: int
    host: str = "-"

    def tag(self) -> str:
        return (f"machine={self.machine} boot={self.boot} pidns={self.pidns} pid={self.pid} "
                f"start={self.start} host={self.host}")[:256]

    def same_kernel(self, other: Owner) -> bool:
        """Whether pids of ``self`` and ``other`` name processes of one kernel and namespace."""
        return (self.machine, self.boot, self.pidns) == (other.machine, other.boot, other.pidns)


@attrs.frozen
class Seen:
    """What ``/proc`` says of a pid now: ``gone`` (no such process, or a zombie),
    ``running`` (with its start time), or ``unknown`` (cannot tell)."""

    state: str
    start: int | None = None


def parse(text: str | None) -> Owner | None:
    """The owner a tag names; None for anything that is not a well-formed owner tag."""
    if not text:
        return None
    fields = dict(item.partition("=")[::2] for item in text.split())
    try:
        pid, start = int(fields["pid"]), int(fields["start"])
        machine, boot, pidns = fields["machine"], fields["boot"], fields["pidns"]
    except (KeyError, ValueError):
        return None
    if pid < 1 or start < 0 or not boot or boot == "-" or not pidns:
        return None
    return Owner(machine, boot, pidns, pid, start, fields.get("host") or "-")


def liveness(owner: Owner, here: Owner, seen: Seen) -> tuple[bool | None, str]:
    """(True, how) when ``owner`` runs, (False, why) when it is dead, (None, "") when this
    process cannot know (another kernel or pid namespace, or ``/proc`` would not say)."""
    if not owner.same_kernel(here):
        return None, ""
    who = f"pid {owner.pid} on this host"
    if seen.state == "gone":
        return False, f"owner {who} is gone"
    if seen.state != "running" or seen.start is None:
        return None, ""
    if seen.start != owner.start:
        return False, (f"owner {who} is gone (the pid is another process now, started at "
                       f"tick {seen.start}, not {owner.start})")
    return True, f"owner {who} runs"


def stat_fields(text: str) -> tuple[str, int] | None:
    """(state, start time) from the text of ``/proc/<pid>/stat``; None when it does not parse.

    The command name (field 2) may hold spaces and parentheses: fields are counted after
    its last ``)``.
    """
    rest = text.rpartition(")")[2].split()
    if len(rest) < 20:
        return None
    try:
        return rest[0], int(rest[19])
    except ValueError:
        return None


# -- the thin /proc reader -------------------------------------------------------------

def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read(4096).strip()
    except OSError:
        return ""


@functools.cache
def _kernel() -> tuple[str, str, str] | None:
    boot = _read(BOOT_ID)
    try:
        pidns = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return None
    if not boot:
        return None
    machine = _read(MACHINE_ID)
    # machine-id(5): not to be shown as it is; an application-specific keyed hash instead
    mark = hmac.new(machine.encode(), b"amic:owner", hashlib.sha256).hexdigest()[:32]
    return (mark if machine else "-"), boot, pidns


def current() -> Owner | None:
    """This process as an owner; None where ``/proc`` cannot say (no tag is written then)."""
    kernel = _kernel()
    if kernel is None:
        return None
    pid = os.getpid()
    fields = stat_fields(_read(f"/proc/{pid}/stat"))
    if fields is None:
        return None
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in ".-_")[:64] or "-"
    return Owner(*kernel, pid=pid, start=fields[1], host=host)


def look(pid: int) -> Seen:
    """Whether ``pid`` runs here, and since when."""
    if pid < 1:
        return Seen("unknown")
    try:
        os.kill(pid, 0)     # unlike /proc, not hidden by hidepid=
    except ProcessLookupError:
        return Seen("gone")
    except PermissionError:
        pass                # it exists; another user's
    except OSError:
        return Seen("unknown")
    fields = stat_fields(_read(f"/proc/{pid}/stat"))
    if fields is None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return Seen("gone")     # it went between the two looks
        except OSError:
            pass
        return Seen("unknown")      # it exists but /proc will not show it
    state, start = fields
    if state in ("Z", "X"):
        return Seen("gone")         # killed, not yet reaped by its parent
    return Seen("running", start)


def tags() -> dict[str, str]:
    """The owner tag of this process (empty where it cannot be known)."""
    me = current()
    return {TAG_OWNER: me.tag()} if me is not None else {}


def on_this_host(resource_tags: Mapping[str, str]) -> tuple[bool | None, str]:
    """:func:`liveness` of the owner a resource is tagged with, as far as this host knows."""
    theirs = parse(resource_tags.get(TAG_OWNER))
    here = current()
    if theirs is None or here is None or not theirs.same_kernel(here):
        return None, ""
    return liveness(theirs, here, look(theirs.pid))


def describe(resource_tags: Mapping[str, str]) -> str:
    """Who the owner is, for a listing."""
    theirs = parse(resource_tags.get(TAG_OWNER))
    if theirs is None:
        return "owner unknown"
    here = current()
    if here is not None and theirs.same_kernel(here):
        return f"pid {theirs.pid} on this host"
    return f"pid {theirs.pid} on {theirs.host}"
