"""The cyclic garbage collector paused while a large structure is built (parse, resolve, plan,
dry run).

Those steps make millions of objects and no reference cycles, and each full pass of the
collector walks every object alive: paused, a 325,000-service Amifile no longer pays for
passes that find nothing. Objects made while the collector was paused are still young when
it resumes, and its next passes would walk them all (about a second of a 4 MiB compile): when
a step made many, they are moved out of its sight (``gc.freeze``). Freed as ever when no
longer referenced; only a reference cycle among them would stay (they make none).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

FREEZE_AFTER = 100_000
"""Objects a step must have made for them to be frozen: a small Amifile changes nothing."""


@contextlib.contextmanager
def paused() -> Iterator[None]:
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            if gc.get_count()[0] > FREEZE_AFTER:
                gc.freeze()
            gc.enable()
