"""The Machine contract: optional capabilities are typed attributes every machine has."""

from __future__ import annotations

import inspect
import re

from amic.engine import build as engine_build
from amic.targets import base
from amic.targets.ec2 import target as ec2_target
from amic.targets.ec2.machine import Ec2Machine
from amic.targets.local.target import LocalMachine
from amic.targets.ssh.session import SshConnection
from tests.harness.fake import FakeMachine

CAPABILITIES = {"takes_stdin": False, "build_public_key": None}


def test_every_machine_is_a_machine_with_the_capabilities_default() -> None:
    for cls in (Ec2Machine, LocalMachine, SshConnection, FakeMachine):
        assert issubclass(cls, base.Machine), cls
    for name, default in CAPABILITIES.items():
        assert getattr(base.Machine, name) == default
        assert name in inspect.get_annotations(base.Machine)
    assert LocalMachine.takes_stdin is True          # the one that pipes the stage2 in
    assert SshConnection.takes_stdin is False and FakeMachine.build_public_key is None


def test_the_engine_and_targets_read_capabilities_plainly() -> None:
    # A capability read with getattr(..., default) would hide a misspelt name.
    for module in (engine_build, ec2_target):
        source = inspect.getsource(module)
        found = re.findall(r"getattr\(\s*[\w.]*machine\w*\s*,", source)
        assert not found, (module.__name__, found)
    assert "b.machine.takes_stdin" in inspect.getsource(engine_build)


def test_the_router_shows_a_redrawn_line_as_a_terminal_would() -> None:
    from amic.contract import own_prefix
    from amic.engine.progress import OutputRouter

    seen: list[tuple[str, str, bool]] = []
    router = OutputRouter(lambda *item: seen.append(item), default="install", mark="m1")
    own = own_prefix("m1")
    router(f"{own}web: init: begin\r\n")
    router("get 10%\rget 60%\rget done\r")        # as a machine hands it over: raw
    router("plain line")
    router(f"half\r{own}web: init: ok 0s")      # a redraw ending in the runner's own line
    assert seen == [("web", "amic: web: init: begin", True), ("web", "get done", False),
                    ("web", "plain line", False), ("web", "amic: web: init: ok 0s", True)]
    assert router.tail("web") == ["get done", "plain line"]
    assert base.terminal_line("a\rb\r\n") == "b" and base.terminal_line("x") == "x"


def test_no_target_borrows_the_local_targets_terminal_helper() -> None:
    import amic.targets.ec2.machine
    import amic.targets.ssh.session

    for module in (amic.targets.ec2.machine, amic.targets.ssh.session):
        assert "amic.targets.local" not in inspect.getsource(module), module.__name__
