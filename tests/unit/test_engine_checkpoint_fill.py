"""An explicit ``--checkpoint`` is honoured when the final image is cached (issue 17,
item 7), on the in-memory target: only the missing checkpoints are made, from the deepest
checkpoint below the first of them, and the final image stays. The same through the CLI
and the build memo on the EC2 stand-in: tests/e2e/test_ec2_checkpoint_policy.py."""

from __future__ import annotations

import pytest
from amic.engine.build import BuildOptions, build
from amic.engine.checkpoint import asked_for

from tests.harness.fake import AMIFILE, FakeTarget


@pytest.fixture
def amifile(tmp_path):
    path = tmp_path / "Amifile"
    path.write_text(AMIFILE)
    return path


def run(target, amifile, **kw):
    return build(target, BuildOptions(amifile=str(amifile), **kw))


@pytest.mark.parametrize("first, then, events", [
    ("last", "all", ["launch base-1", "put /tmp/amic-stage2.tar", "snapshot a", "snapshot b",
                     "release"]),
    ("none", "last", ["launch base-1", "put /tmp/amic-stage2.tar", "snapshot c", "release"]),
    ("a", "b", ["launch img-1", "put /tmp/amic-stage2.tar", "snapshot b", "release"]),
    ("all", "all", []),
    ("last", "auto", []),
    ("last", None, []),      # the target's default asks nothing of a cached image
])
def test_a_cached_image_gets_the_checkpoints_an_explicit_policy_asks_for(amifile, first, then,
                                                                          events):
    t = FakeTarget()
    r1 = run(t, amifile, checkpoint=first)
    t.events.clear()
    r2 = run(t, amifile, checkpoint=then)
    assert t.events == events
    assert r2.image_id == r1.image_id and r2.final_key == r1.final_key
    assert [r.service for r in r2.layers] == ["a", "b", "c"]
    assert r2.cached == (not events)
    if events:
        ran = {r.service: r.reason for r in r2.layers if r.status == "RUN"}
        assert f"no checkpoint (--checkpoint {then})" in ran.values()
    # and now nothing is missing: the next such build makes nothing
    t.events.clear()
    assert run(t, amifile, checkpoint=then).cached and t.events == []


def test_what_each_policy_asks_for():
    services = ["a", "b", "c"]
    assert asked_for("all", services) == ("a", "b", "c")
    assert asked_for("last", services) == ("c",)
    assert asked_for(frozenset({"c", "a"}), services) == ("a", "c")
    assert asked_for("auto", services) == asked_for("none", services) == ()


def test_the_dry_run_says_what_the_fill_would_do(amifile):
    from amic.engine.dryrun import dry_run

    t = FakeTarget()
    r1 = run(t, amifile, checkpoint="last")
    plan = dry_run(t, BuildOptions(amifile=str(amifile), checkpoint="all"))
    assert plan.final_image_id == r1.image_id and plan.would_run == ["a", "b"]
    assert "to make the missing checkpoints (a, b)" in plan.text()
    t.events.clear()
    r2 = run(t, amifile, checkpoint="all")
    ran = [r.service for r in r2.layers if r.status == "RUN"]
    assert ran == plan.would_run
    assert [(r.service, r.reason) for r in r2.layers] == [
        (layer.service, layer.reason) for layer in plan.layers]
    assert t.events[0] == f"launch {plan.launch_from}"
    assert dry_run(t, BuildOptions(amifile=str(amifile), checkpoint="all")).would_run == []
