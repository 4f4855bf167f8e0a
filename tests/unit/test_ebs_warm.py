"""``ebs_early.Warm``: the EBS client made in a thread from the build's first layer on, so
the upload finds it made; the error its making met is raised where the client is asked
for, in the build's thread, not lost in the helper's."""

from __future__ import annotations

import threading
import time

import pytest
from amic.errors import UsageError
from amic.targets.ec2.ebs_early import Warm


def test_the_client_is_made_in_another_thread_while_the_caller_goes_on():
    started = threading.Event()
    made_in: list[str] = []

    def make():
        started.set()
        made_in.append(threading.current_thread().name)
        time.sleep(0.3)
        return "client"

    t0 = time.monotonic()
    warm = Warm(make)
    assert time.monotonic() - t0 < 0.2            # the caller was not held up
    assert started.wait(5)
    assert warm() == "client" and warm() == "client"
    assert made_in == ["ebs-client"]


def test_the_error_making_it_met_is_raised_to_whoever_asks():
    def make():
        raise UsageError("no AWS region: pass --region")

    warm = Warm(make)
    for _ in range(2):
        with pytest.raises(UsageError, match="no AWS region"):
            warm()
