"""The build memo: answer an unchanged rebuild without parsing anything.

An unchanged ``amic build`` must cost about what ``podman build`` costs for
a fully cached Containerfile (tens of milliseconds). Importing lark and
parsing alone take longer than that, so after each build on a target with
``fast_rebuild`` the engine records, per (Amifile path, build args, target):

- ``stat`` of every file the result depends on: the Amifile and everything it
  INCLUDEs (and their directories, so a new file that an INCLUDE could find
  is noticed), every COPY source (files and directories), the runtime shipped
  in the artifact, the compiler modules that compute keys and render the
  artifact, and the target's own ``memo_paths`` (the base root's stamp, the
  final image's meta and key file: a pruned image invalidates the memo);
- an HMAC of each ARG's value as it was taken from ``--build-arg`` or the
  environment, keyed with this user's secret (``secret_path()``, 0600, made on
  first use): values are never written, and no unsalted digest a dictionary
  could reverse either;
- the build result, and the target's ``memo_facts`` (ec2: the ``FROM`` text);
- the services whose layer checkpoint the build knew to exist: a build that asks with
  ``--checkpoint`` for a checkpoint not among them takes the full path, which makes it
  (``amic.engine.checkpoint.missing_checkpoints``). A memo never answers for a policy it
  did not see satisfied.

``lookup`` redoes the stats and digests and, when all match, returns the
recorded result. Any difference (or any error) means "no memo": the full
build then runs, finds the final key in the cache as usual, and refreshes
the memo. A target whose answer can change remotely (ec2: ``FROM debian:12``
is whatever AMI Debian published last) is asked to ``confirm_memo`` the hit
first. :func:`answer` is the whole fast path the command line calls: lookup,
confirmation, the CACHED lines. This module imports only the standard library, on
purpose (and, when it answers, ``amic.engine.progress`` for its lines, and
``amic.engine.checkpoint`` when a lookup is asked for a ``--checkpoint`` to satisfy).
Stat identity is (mtime_ns, ctime_ns, size, inode), as make and ninja trust it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time

from amic.contract import IGNORE_FILE

FORMAT = 3


def _cache_dir() -> str:
    # Same rule as amic.targets.local.rootfs.cache_dir(), without importing it.
    return os.environ.get("AMIC_CACHE_DIR") or "/var/cache/amic"


def _version() -> str:
    from amic import __version__

    return __version__


def memo_path(amifile: str, build_args: dict[str, str], target: str) -> str:
    ident = json.dumps([FORMAT, _version(), os.path.abspath(amifile), target,
                        sorted(build_args)], separators=(",", ":"))
    name = hashlib.sha256(ident.encode()).hexdigest()[:32]
    return os.path.join(_cache_dir(), "memo", name + ".json")


def _stat(path: str) -> list | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino]


def secret_path() -> str:
    """This user's memo key: ``~/.cache/amic/memo.key`` (``$XDG_CACHE_HOME`` honoured)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "amic", "memo.key")


def _secret() -> bytes:
    """The memo key, made on first use (32 random bytes, mode 0600)."""
    path = secret_path()
    try:
        with open(path, "rb") as fh:
            key = fh.read()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:      # another build made it just now (or a short file: no memo)
        with open(path, "rb") as fh:
            key = fh.read()
        if len(key) < 32:
            raise OSError(f"{path}: too short") from None
        return key
    key = os.urandom(32)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key


def _arg_digest(name: str, build_args: dict[str, str], environ, secret: bytes) -> str | None:
    if name in build_args:
        value = build_args[name]
    elif name in environ:
        value = environ[name]
    else:
        return None
    return hmac.new(secret, f"amic-memo-arg\0{name}\0{value}".encode(), "sha256").hexdigest()


def lookup(amifile: str, build_args: dict[str, str], target: str,
           environ=None, checkpoint: str | None = None) -> dict | None:
    """The recorded result (``BuildResult.to_json()`` form) if nothing changed, else None."""
    found = lookup_with_facts(amifile, build_args, target, environ, checkpoint)
    return None if found is None else found[0]


def lookup_with_facts(amifile: str, build_args: dict[str, str], target: str,
                      environ=None, checkpoint: str | None = None) -> tuple[dict, dict] | None:
    """``(result, facts)`` if nothing changed (facts: for ``Target.confirm_memo``), else None.
    ``checkpoint``: the policy asked for (``--checkpoint``); its checkpoints must be known."""
    environ = os.environ if environ is None else environ
    try:
        with open(memo_path(amifile, build_args, target)) as fh:
            memo = json.load(fh)
        if memo.get("format") != FORMAT:
            return None
        for path, recorded in memo["stats"]:
            if _stat(path) != recorded:
                return None
        secret = _secret() if memo["args"] else b""
        for name, recorded in memo["args"].items():
            if _arg_digest(name, build_args, environ, secret) != recorded:
                return None
        if checkpoint is not None and not _satisfies(memo, checkpoint):
            return None
        return memo["result"], memo.get("facts") or {}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def answer(amifile: str, build_args: dict[str, str], target: str, *, checkpoint: str | None,
           no_cache: bool, context: str | None, reporter,
           confirm=None) -> tuple[dict | None, object]:
    """The fast path of ``amic build``: an unchanged rebuild answered from the memo.

    Returns ``(result, made)``. ``result``: the recorded ``BuildResult.to_json()`` with this
    answer's timing, its lines said through ``reporter`` (an
    :class:`amic.engine.progress.Reporter`); None when the full build must run. ``confirm``:
    for a target whose hit must be confirmed (``amic.targets.MEMO``), makes that target, whose
    ``confirm_memo`` is asked; ``made`` is it (None if none was made), for the full build.
    """
    if no_cache or context is not None:   # keyed by the Amifile alone (see save)
        return None, None
    t0 = time.monotonic()
    found = lookup_with_facts(amifile, build_args, target, checkpoint=checkpoint)
    if found is None:
        return None, None
    result, facts = found
    made = None
    if confirm is not None:     # ec2: the base may be another AMI today (two DescribeImages)
        made = confirm()
        # a target that must not answer with an image (ec2 --skip-create-ami) asks nothing
        if not made.fast_rebuild or not made.confirm_memo(result, facts):
            return None, made
    from amic.engine.progress import short

    # The lines as they always were (one space wider than reporter.layer's: kept byte for
    # byte, output that scripts may match).
    n = len(result["layers"])
    for i, layer in enumerate(result["layers"], 1):
        reporter.say(f"[{i}/{n}] {layer['service']:<16} CACHED            unchanged")
    reporter.note(f"unchanged: image {short(result['image_id'])} "
                  f"(final key {result['final_key'][:12]})")
    result["timings"] = {"total": round(time.monotonic() - t0, 3)}
    return result, made


def recall_final(target, amifile: str, build_args: dict[str, str]) -> None:
    """Tell ``target`` the final image the memo recorded for this Amifile, valid or not
    (``Target.recall_final``): a rebuild the memo cannot answer (an input touched, another
    checkpoint policy, a quick check throttled) still finds the image just made."""
    try:
        with open(memo_path(amifile, build_args, target.name)) as fh:
            result = json.load(fh)["result"]
        key, image_id = result["final_key"], result["image_id"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if isinstance(key, str) and isinstance(image_id, str):
        target.recall_final(key, image_id)


def _satisfies(memo: dict, checkpoint: str) -> bool:
    """Whether every checkpoint ``checkpoint`` asks for was known to exist when recorded."""
    if checkpoint in ("none", "auto"):     # ask for nothing a cached build could owe
        return True
    from amic.engine.checkpoint import asked_for, parse_checkpoint
    from amic.errors import UsageError

    services = [layer["service"] for layer in memo["result"]["layers"]]
    try:
        wanted = asked_for(parse_checkpoint(checkpoint, tuple(services)), services)
    except UsageError:
        return False       # the full path says what is wrong with it
    return set(wanted) <= set(memo.get("checkpointed") or ())


def _still_checkpointed(dest: str, result: dict) -> set[str]:
    """The checkpoints the memo at ``dest`` knew, if it was of the same layer keys: a build
    that started from the top checkpoint did not look at the ones below, which are there
    as long as the image built on them is (prune keeps what a kept image sits on)."""
    try:
        with open(dest) as fh:
            old = json.load(fh)
        if old.get("format") != FORMAT:
            return set()
        keys = [(r["service"], r["key"]) for r in old["result"]["layers"]]
        if keys != [(r["service"], r["key"]) for r in result["layers"]]:
            return set()
        return set(old.get("checkpointed") or ())
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _input_paths(plan) -> list[str]:
    import amic
    from amic import safeopen
    from amic.compile import artifact, context, ignore, packages  # modules that compute keys
    from amic.compile import plan as planmod

    paths: list[str] = []
    for f in plan.resolved.files:
        paths.append(os.path.abspath(f))
        # an edited .amicignore changes what COPY takes (stat'ed even when absent: one added
        # later must be seen too). Not the directory itself: any file written beside the
        # Amifile (a --manifest, an editor's swap file) would defeat the memo, and what
        # COPY takes from it is stat'ed below (a COPY'd directory is one of its sources).
        paths.append(os.path.join(os.path.dirname(os.path.abspath(f)), IGNORE_FILE))
    for sp in plan.services:
        for copy in sp.service.copies:
            for src in copy.sources:
                paths.append(os.path.abspath(os.path.join(copy.context, src)))
        for cp in sp.copies:
            paths.extend(os.path.abspath(f.source) for f in cp.files)
    for mod in (amic, artifact, planmod, context, ignore, packages, safeopen):
        paths.append(os.path.abspath(mod.__file__))
    try:
        from importlib import resources

        root = str(resources.files("amic._runtime"))
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            paths.append(dirpath)
            paths.extend(os.path.join(dirpath, n) for n in filenames)
    except (ImportError, TypeError):
        return []  # cannot see the runtime's files: never memoise
    return sorted(set(paths))


# File timestamps come from the kernel's coarse clock (up to a tick behind).
CLOCK_SLACK_NS = 50_000_000


def save(target, options, plan, base, image, reports, *, started_ns: int,
         checkpointed: set[str] | frozenset[str] = frozenset()) -> None:
    """Record a finished (or found) build; called by the engine.

    Not recorded when an input changed at or after ``started_ns`` (the build's
    start): the build may have read the older content, and the memo would tie
    the newer stat to the older result.
    """
    if options.context is not None:
        return   # lookups are keyed by the Amifile alone (answer skips the memo too)
    inputs = _input_paths(plan)
    if not inputs:
        return
    stats = []
    for path in inputs:
        st = _stat(path)
        if st is None and os.path.basename(path) == IGNORE_FILE:
            stats.append([path, None])   # absent is a state too: creating one is a change
            continue
        if st is None or max(st[0], st[1]) >= started_ns - CLOCK_SLACK_NS:
            return
        stats.append([path, st])
    for path in target.memo_paths(base, image):
        st = _stat(path)
        if st is None:
            return
        stats.append([path, st])
    environ = os.environ
    if plan.missing_args:
        return   # built with --allow-missing-args: a lookup without it must take the full path
    declared = plan.declared_args   # global ARGs and every SERVICE block's own
    secret = _secret() if declared else b""
    args = {a.name: _arg_digest(a.name, dict(options.build_args), environ, secret)
            for a in declared}
    result = {
        "image_id": image.id, "final_key": plan.final_key, "target": target.name,
        "base_image_id": base.id, "amifile": plan.amifile_path, "cached": True,
        "layers": [{"service": r.service, "key": r.key, "status": "CACHED",
                    "reason": "unchanged", "seconds": None, "checkpoint": None}
                   for r in reports],
    }
    dest = memo_path(options.amifile, dict(options.build_args), target.name)
    memo = {"format": FORMAT, "stats": stats, "args": args, "result": result,
            "facts": target.memo_facts(plan.base_ref, base, image),
            "checkpointed": sorted(set(checkpointed) | _still_checkpointed(dest, result))}
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = f"{dest}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(memo, fh)
    os.replace(tmp, dest)
