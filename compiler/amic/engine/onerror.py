"""``--on-error ask`` and ``--debug``: a person at the terminal decides, between build steps.

Packer's ``-on-error=ask`` and ``-debug``. A step that fails under ``ask`` is not the end of
the build: the user is asked to clean up (the default, as ``--on-error cleanup``), abort
(keep the machine, as ``--on-error abort``) or retry the step on the same machine (after
fixing what it needed: a file on the machine, a network rule, a quota). The steps:

- the engine's: launching, uploading the stage2 (and marking the build key), each layer's
  INIT, finishing the image (boot hook, prepare-image);
- a target's, through ``Target.step`` (which the engine sets to :func:`run_step`): ec2 asks
  for waiting for the instance and SSH, creating the final image, its attributes and
  sharing, and each region copy (only the regions that failed are copied again).

Where running a step again cannot mean the same thing (``retry=False``: registering an
image again after the first was deregistered), the question says why and offers no retry.
A failure is asked about once: a step inside another (SSH inside the launch) that the user
chose to clean up after is not asked about again by the outer one. ``--debug`` pauses
after every step until Enter, before the launch and before the final image too.

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
NO_RETRY = "[c]lean up, [a]bort and keep the machine? [c] "
"""The question where a retry cannot mean running the same step again (the reason first)."""


def run_step(b, what: str, step: Callable[[], T], *, retry: bool | str = True) -> T:
    """``step()``; under ``--on-error ask`` a failure asks what to do, and ``retry`` runs it
    again (as often as asked). ``abort`` keeps the machine, ``cleanup`` fails as usual.
    ``retry``: True, or why a retry is not offered (the question then has no ``[r]``)."""
    while True:
        try:
            return step()
        except BuildError as exc:
            if (b.options.on_error != "ask" or b.options.prompt is None
                    or getattr(exc, "asked", False)):
                raise
            choice = ask(b, f"{what} failed: {exc}", retry=retry)
            exc.asked = True         # an outer step does not ask about it again
            if choice == "retry":
                b.reporter.note(f"--on-error ask: retrying {what}")
                continue
            if choice == "abort":
                b.target.keep_on_error = True     # the target leaves the machine running
                if b.machine is not None:
                    err = BuildError(f"{exc}\n\n--on-error ask: aborted; the machine was left "
                                     f"for debugging; reach it with:\n    {b.machine.describe()}")
                    err.asked = True
                    raise err from exc
            raise


def ask(b, why: str, *, retry: bool | str = True) -> str:
    """The user's choice (``cleanup``, ``abort``, or ``retry`` where offered), asked until
    it is one."""
    b.reporter.end()
    question = QUESTION if retry is True else NO_RETRY
    text = why + "\n" + ("" if retry is True else f"(no retry: {retry})\n") + question
    while True:
        answer = b.options.prompt(text).strip().lower()
        if answer in CHOICES and (retry is True or CHOICES[answer] != "retry"):
            return CHOICES[answer]
        text = f"{answer!r}? {question}"


def pause(b, what: str, *, then: str | None = None) -> None:
    """``--debug``: wait for Enter after ``what`` (``then``: the step that comes next)."""
    if b.options.debug and b.options.prompt is not None:
        b.reporter.end()
        nxt = f" (next: {then})" if then else ""
        b.options.prompt(f"--debug: {what} done; press Enter to go on{nxt} ")
