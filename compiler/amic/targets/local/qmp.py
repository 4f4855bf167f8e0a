"""A minimal QMP client: one command to a QEMU's monitor socket, its answer checked.

QMP (the QEMU Machine Protocol) is JSON lines over a UNIX socket: a greeting,
``qmp_capabilities`` to leave negotiation mode, then commands; asynchronous events
(``POWERDOWN``, ``SHUTDOWN``) may arrive between a command and its answer, so answers
are read until one carries ``return`` or ``error``.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

from amic.errors import BuildError

MAX_LINE = 1 << 20
"""Characters a QMP message may have (QEMU's answers here are short)."""


def execute(path: Path, command: str, arguments: dict | None = None, *,
            timeout: float = 5.0) -> object:
    """Run ``command`` on the QMP socket ``path``; its ``return`` value. OSError when
    nothing listens there (a QEMU that is gone); BuildError when QEMU refuses it."""
    from amic.targets.local.vmfiles import connect_unix

    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        connect_unix(path, sock)        # the socket itself, never what a link there names
        stream = sock.makefile("rw", errors="replace")
        greeting = _read(stream, "the greeting")
        if "QMP" not in greeting:
            raise BuildError(f"{path}: not a QMP socket")
        _call(stream, "qmp_capabilities", None)
        return _call(stream, command, arguments)


def _call(stream, command: str, arguments: dict | None) -> object:
    message: dict = {"execute": command}
    if arguments:
        message["arguments"] = arguments
    stream.write(json.dumps(message) + "\n")
    stream.flush()
    while True:
        answer = _read(stream, command)
        if "return" in answer:
            return answer["return"]
        if "error" in answer:
            error = answer["error"]
            desc = error.get("desc") if isinstance(error, dict) else None
            raise BuildError(f"QMP {command}: {str(desc or error)[:500]!r}")


def _read(stream, what: str) -> dict:
    """One QMP message (a JSON object on a line of at most :data:`MAX_LINE` characters)."""
    line = stream.readline(MAX_LINE)
    if not line:
        raise OSError(f"QMP: the connection closed during {what}")
    try:
        answer = json.loads(line)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise BuildError(f"QMP: {what}: the answer is not a QMP message")
    return answer
