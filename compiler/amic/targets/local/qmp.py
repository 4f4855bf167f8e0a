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


def execute(path: Path, command: str, arguments: dict | None = None, *,
            timeout: float = 5.0) -> object:
    """Run ``command`` on the QMP socket ``path``; its ``return`` value. OSError when
    nothing listens there (a QEMU that is gone); BuildError when QEMU refuses it."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        stream = sock.makefile("rw")
        greeting = json.loads(stream.readline() or "{}")
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
        line = stream.readline()
        if not line:
            raise OSError(f"QMP: the connection closed during {command}")
        answer = json.loads(line)
        if "return" in answer:
            return answer["return"]
        if "error" in answer:
            raise BuildError(f"QMP {command}: {answer['error'].get('desc', answer['error'])}")
