"""What a build shows while it runs: per-layer lines, streamed output, a live status line.

Two renderings of the same events:

- plain (not a terminal, or ``--progress=plain``): one line per event, fit
  for CI logs; remote output prefixed by the service that printed it. A step
  (``begin``) gets a timestamped stage line before its first output, or once
  it has run :data:`STAGE_AFTER` seconds (a quick silent step prints none), and
  a ``... still running`` line each time it has been silent for
  ``AMIC_HEARTBEAT_SECONDS`` (default 30), so a CI log always says what runs;
- tty: the same lines, plus a status line at the bottom (current step,
  service, elapsed time, last output) redrawn in place.

Remote output is attributed to services with the runner's progress markers
(``amic: <svc>: <phase>: begin|ok <s>s|skipped (...)|FAILED exit <n> at <where>``,
see docs/internals.md): an :class:`OutputRouter` follows them and keeps the
tail of every service's output for the failure report. The build gives every
runner command a nonce (``contract.MARK_VAR``) and the router takes only the
lines that carry it for the runner's own, so a script printing a marker, or a
secret whose value is ``FAILED`` or a service name, cannot fake or hide one.
Everything goes to stderr; stdout is kept for the final image id.

Every value of every SECRET (:data:`amic.contract.MASK_MIN` bytes or longer)
is replaced by ``***`` (:class:`Redactor`) in the payload: the output of the
machine's commands, as it arrives (so the tails in error messages and the
status line too), and the error a build ends with. amic's own lines (the
runner's, the layer lines, notes, the image id) are never masked: they hold no
secret, and a short or common value must not rewrite them.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
import time
from typing import TextIO

from amic.contract import FAILED_AT, MARKER, MASK_MIN, own_prefix
from amic.targets.base import terminal_line

TAIL_LINES = 15
MASK = "***"
STAGE_AFTER = 1.0
"""Plain output: a step still running after this many seconds gets its stage line."""
HEARTBEAT_VAR = "AMIC_HEARTBEAT_SECONDS"
DEFAULT_HEARTBEAT = 30.0


def heartbeat_seconds() -> float:
    """``$AMIC_HEARTBEAT_SECONDS``: how long a step may be silent in plain output before a
    ``still running`` line (default 30; a value that is no positive number means the default)."""
    try:
        value = float(os.environ.get(HEARTBEAT_VAR, DEFAULT_HEARTBEAT))
    except ValueError:
        return DEFAULT_HEARTBEAT
    return value if 0 < value < float("inf") else DEFAULT_HEARTBEAT


def clock(wall: float | None = None) -> str:
    """``HH:MM:SS`` (local time) for the lines of plain output that mark time."""
    return time.strftime("%H:%M:%S", time.localtime(wall))


def maskable(value: str) -> bool:
    """Whether a secret value (one line of it) is long enough to mask (runtime/amic agrees)."""
    return len(value.strip(" \t\r").encode()) >= MASK_MIN


class Redactor:
    """Replaces every secret value (and each line of a multi-line one) with ``***``; values
    shorter than ``MASK_MIN`` bytes are left alone (:func:`too_short`)."""

    def __init__(self, values=()) -> None:
        self.pieces: list[str] = []
        self.add(values)

    def add(self, values) -> None:
        pieces = set(self.pieces)
        for value in values:
            pieces.add(value)
            pieces.update(value.splitlines())
        # longest first, so a secret that contains another is masked whole
        self.pieces = sorted((p for p in pieces if maskable(p)), key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for piece in self.pieces:
            if piece in text:
                text = text.replace(piece, MASK)
        return text

    def error(self, exc: BaseException) -> BaseException:
        """``exc`` with every secret value masked in its message (and hint and source line),
        and in those of the errors reported with it (``AmifileError.more``)."""
        if self.pieces:
            for one in (exc, *getattr(exc, "more", ())):
                one.args = tuple(self(a) if isinstance(a, str) else a for a in one.args)
                for name in ("message", "hint", "source_line"):
                    value = getattr(one, name, None)
                    if isinstance(value, str):
                        setattr(one, name, self(value))
        return exc


def too_short(value: str) -> bool:
    """A secret with a line that is not blank but too short to mask."""
    return any(line.strip(" \t\r") and not maskable(line) for line in value.splitlines())


def mask_secrets(reporter: Reporter, secrets) -> None:
    """Give the reporter the SECRET values (a mapping name -> value) to mask; warn, by name,
    about each one too short to mask."""
    reporter.redact.add(secrets.values())
    short_ones = sorted(name for name, value in secrets.items() if too_short(value))
    if short_ones:
        reporter.warn(f"secret {', '.join(short_ones)}: a value (or line) under {MASK_MIN} "
                      "characters is not masked in the output (*** for every such bit of "
                      "text would garble it); use a longer secret")


def short(image_id: str) -> str:
    """Docker-style 12-character ids for content hashes; anything else (ami-…, ssh://…) whole."""
    digest = image_id.removeprefix("sha256:")
    if len(digest) >= 32 and all(c in "0123456789abcdef" for c in digest):
        return digest[:12]
    return image_id


class OutputRouter:
    """Attributes runner output lines to services using the progress markers.

    ``mark``: the nonce the runner was given (``contract.MARK_VAR``); only lines with it are
    the runner's own. Without one (a runner not given a nonce) a line starting ``amic: `` is
    taken at its word."""

    def __init__(self, sink, default: str = "amic", redact: Redactor | None = None,
                 mark: str | None = None) -> None:
        self.sink = sink
        """Called with (service label, line, is_marker)."""
        if redact is None:  # a Reporter's method as the sink: its redactor
            redact = getattr(getattr(sink, "__self__", None), "redact", None)
        self.redact = redact
        """Masks secrets in each payload line before anything keeps or shows it."""
        self.prefix = own_prefix(mark) if mark else None
        self.default = default
        self.current: str | None = None
        self.tails: dict[str, collections.deque[str]] = {}
        self.failures: dict[str, tuple[str, str | None]] = {}
        """service -> (exit code, Amifile location) from FAILED markers."""
        self.finished: dict[str, str] = {}
        """service -> last event seen (ok, skipped, FAILED)."""

    def tail(self, service: str) -> list[str]:
        return list(self.tails.get(service, ()))

    def __call__(self, line: str) -> None:
        # Here and only here, for every target: a machine hands lines over as written.
        line = terminal_line(line)
        if self.prefix is None:
            line = self.redact(line) if self.redact is not None else line
            if MARKER.match(line):
                self._own(line)
            else:
                self._payload(line, masked=True)
            return
        at = line.find(self.prefix)
        if at < 0:
            self._payload(line)
            return
        if at > 0:      # a script's last output without a newline, then the runner's line
            self._payload(line[:at])
        self._own("amic: " + line[at + len(self.prefix):])

    def _payload(self, line: str, *, masked: bool = False) -> None:
        if self.redact is not None and not masked:
            line = self.redact(line)
        self._keep(self.current or self.default, line, False)

    def _own(self, line: str) -> None:
        m = MARKER.match(line)
        if not m:
            self._keep(self.current or self.default, line, False)
            return
        svc, event = m["svc"], m["event"]
        if event == "begin":
            self.current = svc
        else:
            self.finished[svc] = event
            if event == "FAILED":
                f = FAILED_AT.search(m["rest"])
                self.failures[svc] = (f["code"], f["where"]) if f else ("?", None)
            if self.current == svc:
                self.current = None
        self.sink(svc, line, True)

    def _keep(self, label: str, line: str, marker: bool) -> None:
        self.tails.setdefault(label, collections.deque(maxlen=TAIL_LINES)).append(line)
        self.sink(label, line, marker)


class Reporter:
    """Renders build events to a stream (stderr), plain or with a live status line."""

    def __init__(self, stream: TextIO | None = None, *, mode: str = "auto",
                 quiet: bool = False, heartbeat: float | None = None,
                 stage_after: float = STAGE_AFTER) -> None:
        self.stream = stream or sys.stderr
        self.redact = Redactor()
        """Secret values to mask in the payload (the build adds them first; routers use it)."""
        if mode == "auto":
            mode = "tty" if getattr(self.stream, "isatty", lambda: False)() else "plain"
        self.tty = mode == "tty"
        self.quiet = quiet
        self.lock = threading.Lock()
        self.status: str | None = None
        self.status_since = 0.0
        self.status_wall = 0.0
        self.heartbeat = heartbeat or heartbeat_seconds()
        """Plain output: seconds of silence in a step before a ``still running`` line."""
        self.stage_after = stage_after
        self.stage_shown = False
        """Plain output: whether the current step's stage line is out."""
        self.last_write = 0.0
        self.last_output = ""
        self.width = 100
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()
        if self.tty:
            try:
                import shutil
                self.width = shutil.get_terminal_size().columns
            except OSError:
                pass

    # -- low level --------------------------------------------------------

    def _write(self, text: str) -> None:
        with self.lock:
            if self.tty and self.status is not None:
                self.stream.write("\r\x1b[2K")
            if not self.tty and self.status is not None and not self.stage_shown:
                self._stage_line()   # what runs, before the first line it prints
            self.stream.write(text + "\n")
            if self.tty and self.status is not None:
                self._draw_status()
            self.stream.flush()
            self.last_write = time.monotonic()

    def _stage_line(self) -> None:
        """Plain: the step's timestamped start line (the lock is held)."""
        self.stage_shown = True
        self.stream.write(f"{clock(self.status_wall)} {self.status}\n")

    def _plain_tick(self) -> None:
        """Plain: the stage line of a step that runs long, a heartbeat when it is silent."""
        now = time.monotonic()
        if not self.stage_shown and now - self.status_since >= self.stage_after:
            self._stage_line()
        elif self.stage_shown and now - self.last_write >= self.heartbeat:
            self.stream.write(f"{clock()} ... still running {self.status} "
                              f"({now - self.status_since:.0f}s)\n")
        else:
            return
        self.stream.flush()
        self.last_write = now

    def _draw_status(self) -> None:
        elapsed = time.monotonic() - self.status_since
        text = f"{self.status} {elapsed:6.1f}s"
        if self.last_output:
            text += "  " + self.last_output
        self.stream.write("\r\x1b[2K\x1b[1m" + text[: max(self.width - 1, 20)] + "\x1b[0m")

    def _tick(self) -> None:
        while not self._stop.wait(0.2):
            with self.lock:
                if self.status is None:     # between steps: no thread left waking up
                    self._ticker = None
                    return
                if self.tty:
                    self._draw_status()
                    self.stream.flush()
                else:
                    self._plain_tick()

    # -- events -------------------------------------------------------------

    def note(self, message: str) -> None:
        """A line about what the build does (``amic: ...``)."""
        if not self.quiet:
            self._write(f"amic: {message}")

    def say(self, text: str) -> None:
        """One of amic's own lines as it is (the build memo's CACHED lines)."""
        if not self.quiet:
            self._write(text)

    def warn(self, message: str) -> None:
        self._write(f"amic: warning: {message}")

    def begin(self, status: str) -> None:
        """Start a long step; on a terminal its elapsed time is shown live, in plain output
        its stage line comes before its output (or after ``stage_after``), then heartbeats."""
        if self.quiet:
            return
        with self.lock:
            self.status = status
            self.status_since = time.monotonic()
            self.status_wall = time.time()
            self.stage_shown = False
            self.last_output = ""
            if self._ticker is None:
                self._ticker = threading.Thread(target=self._tick, daemon=True)
                self._ticker.start()

    @contextlib.contextmanager
    def step(self, status: str):
        """``begin(status)`` for the ``with`` block; ``end()`` however it leaves."""
        self.begin(status)
        try:
            yield
        finally:
            self.end()

    def end(self) -> None:
        with self.lock:
            if self.tty and self.status is not None:
                self.stream.write("\r\x1b[2K")
                self.stream.flush()
            self.status = None

    def output(self, label: str, line: str, marker: bool) -> None:
        """A line of remote output (or a runner marker) attributed to ``label``."""
        if self.quiet:
            return
        if self.tty:
            self.last_output = line.strip()[:80]
            if marker:
                return  # the layer lines say the same, better
        self._write(f"{label:>12} | {line}")

    def layer(self, index: int, total: int, service: str, status: str, reason: str,
              seconds: float | None) -> None:
        """One line per layer: CACHED or RUN, why, and how long."""
        if self.quiet:
            return
        took = f"{seconds:7.1f}s" if seconds is not None else " " * 8
        self._write(f"[{index}/{total}] {service:<16} {status:<6} {took}  {reason}")

    def close(self) -> None:
        self._stop.set()
        self.end()
