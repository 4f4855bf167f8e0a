"""``amic run``'s reading of the boot hook's report (``amic.targets.local.boot``): the
machine writes it, so what it says is trusted only as far as its form."""

from __future__ import annotations

import pytest

from amic.errors import UsageError
from amic.targets.local.boot import RunOutcome, check_services, read_report


@pytest.mark.parametrize(("report", "outcome"), [
    ("SERVICE  INIT\nweb  yes\nexit 0\n", RunOutcome(0, "SERVICE  INIT\nweb  yes")),
    ("web  no\nexit 3\n", RunOutcome(1, "web  no")),
    ("web  yes\n", RunOutcome(1, "web  yes")),             # no exit line: not a success
    ("web\nexit \n", RunOutcome(1, "web")),
    ("web\nexit 0x\n", RunOutcome(1, "web")),              # not a number: no traceback
    ("web\nexit \u0660\n", RunOutcome(1, "web")),          # a digit, not an ASCII one
    ("exit 0\n", RunOutcome(0, "")),
    ("", RunOutcome(1, None)),                             # the hook never reported
])
def test_read_report(report: str, outcome: RunOutcome) -> None:
    assert read_report(report) == outcome


def test_check_services_is_the_amifile_rule() -> None:
    assert check_services(["web", "a" * 63, "x-1_y"]) == ("web", "a" * 63, "x-1_y")
    for bad in ("aB", "aé", "", "-a", "a" * 64, "a\n"):
        with pytest.raises(UsageError, match="invalid service name"):
            check_services(["web", bad])
