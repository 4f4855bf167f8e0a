"""Drive the real CLI on a pseudo-terminal: answer its questions as a person would.

``drive(argv, ...)`` starts the command with a pty on stdin and stderr (so ``--on-error
ask`` and ``--debug`` find a terminal), waits for each expected question in order and
answers it with what the step's callback returns (the callback runs while the build waits
on the question: it may look at the stand-in, fix what the failed step needed, assert).
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections.abc import Callable, Sequence

import attrs


@attrs.frozen
class Answer:
    """When ``seen`` shows on the terminal (after the previous answer), write ``reply()``."""

    seen: str
    reply: Callable[[], str]


@attrs.frozen
class Driven:
    returncode: int
    terminal: str
    """Everything written to the terminal (stderr and the questions; the terminal ends
    each line with CR LF)."""
    stdout: str
    unanswered: tuple[str, ...]


def say(text: str) -> Callable[[], str]:
    return lambda: text


def drive(argv: Sequence[str], *, cwd, env, answers: Sequence[Answer],
          timeout: float = 300) -> Driven:
    master, slave = os.openpty()
    proc = subprocess.Popen(list(argv), cwd=cwd, env=env, stdin=slave, stderr=slave,
                            stdout=subprocess.PIPE, text=True)
    os.close(slave)
    todo = list(answers)
    seen, pos = "", 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:      # the child closed the terminal: it ended
                    chunk = b""
                if not chunk and proc.poll() is not None:
                    break
                seen += chunk.decode(errors="replace")
            if todo and todo[0].seen in seen[pos:]:
                pos = seen.index(todo[0].seen, pos) + len(todo[0].seen)
                os.write(master, todo.pop(0).reply().encode())
            if proc.poll() is not None and not ready:
                break
        if proc.poll() is None and todo:     # stuck on a question nobody expected
            proc.kill()
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return Driven(proc.returncode, seen, out, tuple(a.seen for a in todo))
