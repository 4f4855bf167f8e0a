"""``--on-error ask`` and ``--debug``: a person at the terminal decides, between build steps.

Packer's ``-on-error=ask`` and ``-debug``. A step (a layer's INIT) that fails under
``ask`` is not the end of the build: the user is asked to clean up (the default, as
``--on-error cleanup``), abort (keep the machine, as ``--on-error abort``) or retry the
step on the same machine (after fixing what it needed: a file on the machine, a
network rule). ``--debug`` pauses after every step until Enter.

The question goes through ``BuildOptions.prompt``, which the command line gives (it
reads the terminal, and refuses ``ask``/``--debug`` without one): the engine reads no
terminal itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from amic.errors import BuildError

T = TypeVar("T")

CHOICES = {"c": "cleanup", "cleanup": "cleanup", "": "cleanup",
           "a": "abort", "abort": "abort", "r": "retry", "retry": "retry"}
"""Answers and what they mean (an empty answer: clean up, the safe default)."""
QUESTION = "[c]lean up, [a]bort and keep the machine, [r]etry the step? [c] "


def run_step(b, what: str, step: Callable[[], T]) -> T:
    """``step()``; under ``--on-error ask`` a failure asks what to do, and ``retry`` runs it
    again (as often as asked). ``abort`` keeps the machine, ``cleanup`` fails as usual."""
    while True:
        try:
            return step()
        except BuildError as exc:
            if b.options.on_error != "ask" or b.options.prompt is None:
                raise
            choice = ask(b, f"{what} failed: {exc}")
            if choice == "retry":
                b.reporter.note(f"--on-error ask: retrying {what}")
                continue
            if choice == "abort" and b.machine is not None:
                b.target.keep_on_error = True     # the target leaves the machine running
                raise BuildError(f"{exc}\n\n--on-error ask: aborted; the machine was left for "
                                 f"debugging; reach it with:\n    {b.machine.describe()}") from exc
            raise


def ask(b, why: str) -> str:
    """The user's choice (``cleanup``, ``abort`` or ``retry``), asked until it is one."""
    b.reporter.end()
    text = f"{why}\n{QUESTION}"
    while True:
        answer = b.options.prompt(text).strip().lower()
        if answer in CHOICES:
            return CHOICES[answer]
        text = f"{answer!r}? {QUESTION}"


def pause(b, what: str) -> None:
    """``--debug``: wait for Enter after ``what``."""
    if b.options.debug and b.options.prompt is not None:
        b.reporter.end()
        b.options.prompt(f"--debug: {what} done; press Enter to go on ")
