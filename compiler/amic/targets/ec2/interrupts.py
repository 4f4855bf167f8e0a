"""Cleanup that one Ctrl-C does not stop (a second one abandons it)."""

from __future__ import annotations

import contextlib
import signal
import threading


@contextlib.contextmanager
def shielded(log_fn):
    """Run cleanup with one Ctrl-C ignored (a second one abandons it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hits = []

    def handler(signum, frame):
        hits.append(signum)
        if len(hits) == 1:
            log_fn("cleaning up; interrupt again to abandon (then run `amic gc`)")
            return
        raise KeyboardInterrupt

    old_int = signal.signal(signal.SIGINT, handler)
    old_term = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
