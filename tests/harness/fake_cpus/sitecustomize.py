"""Make every Python process started with this folder on PYTHONPATH see
``$AMIC_TEST_FAKE_CPUS`` CPUs (``os.cpu_count`` and ``os.sched_getaffinity``).

For proving the suite holds on a machine with another CPU count than this one
(docs/internals.md, "Tests on other machines"); never used by the suite itself.
"""

import os

_fake = int(os.environ.get("AMIC_TEST_FAKE_CPUS", "0") or 0)
if _fake > 0:
    os.cpu_count = lambda: _fake
    os.sched_getaffinity = lambda pid: set(range(_fake))
