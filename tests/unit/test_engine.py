"""Engine logic against a tiny in-memory target (``tests/harness/fake.py``): cache prefix,
why-missed, checkpoint policy, cleanup order on error and Ctrl-C. The real thing is in
test_build_local.py; the scenarios every target shares are in tests/targets/test_contract.py."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
from amic.contract import MARK_VAR, TAG_KIND
from amic.engine.build import BuildOptions, build, parse_checkpoint, should_checkpoint
from amic.errors import BuildError, UsageError
from amic.targets.base import Target

from tests.harness.fake import AMIFILE, FakeTarget


@pytest.fixture
def amifile(tmp_path):
    path = tmp_path / "Amifile"
    path.write_text(AMIFILE)
    return path


def run(target, amifile, **kw):
    return build(target, BuildOptions(amifile=str(amifile), **kw))


def statuses(result):
    return [(r.service, r.status) for r in result.layers]


def test_cold_then_unchanged(amifile):
    t = FakeTarget()
    r1 = run(t, amifile)
    assert statuses(r1) == [("a", "RUN"), ("b", "RUN"), ("c", "RUN")]
    assert [r.reason for r in r1.layers] == ["first build"] * 3
    assert t.events == ["launch base-1", "put /tmp/amic-stage2.tar", "snapshot a", "snapshot b",
                        "snapshot c", "snapshot final", "release"]
    assert not r1.cached and r1.image_id == "img-4"
    assert t.images[r1.final_key].tags["amic:layer:b"] == r1.layers[1].key
    t.events.clear()
    r2 = run(t, amifile)
    assert r2.cached and r2.image_id == r1.image_id
    assert statuses(r2) == [("a", "CACHED"), ("b", "CACHED"), ("c", "CACHED")]
    assert t.events == []  # nothing launched


def test_changed_init_reruns_it_and_later_layers(amifile):
    t = FakeTarget()
    run(t, amifile)
    amifile.write_text(AMIFILE.replace("echo b", "echo B"))
    t.events.clear()
    r = run(t, amifile)
    assert statuses(r) == [("a", "CACHED"), ("b", "RUN"), ("c", "RUN")]
    assert r.layers[1].reason == "init changed"
    assert r.layers[2].reason == "parent changed (b re-ran)"
    assert t.events[0] == "launch img-1"  # a's checkpoint


def test_update_only_change_reuses_every_layer(amifile):
    t = FakeTarget()
    r1 = run(t, amifile)
    amifile.write_text(AMIFILE.replace("update-b", "update-B"))
    t.events.clear()
    t.commands.clear()
    r2 = run(t, amifile)
    assert statuses(r2) == [("a", "CACHED"), ("b", "CACHED"), ("c", "CACHED")]
    assert not r2.cached and r2.image_id != r1.image_id
    assert t.events == ["launch img-3", "put /tmp/amic-stage2.tar", "snapshot final", "release"]
    assert not any("amic init" in c for c, _ in t.commands)


def test_no_cache_runs_everything(amifile):
    t = FakeTarget()
    run(t, amifile)
    r = run(t, amifile, no_cache=True)
    assert statuses(r) == [("a", "RUN"), ("b", "RUN"), ("c", "RUN")]
    assert {x.reason for x in r.layers} == {"--no-cache"}


def test_args_reach_init_in_env_only(amifile):
    t = FakeTarget()
    r1 = run(t, amifile, build_args={"TOKEN": "s3cret"})
    inits = [(c, env) for c, env in t.commands if "amic init" in c]
    assert inits and all(env == {"TOKEN": "s3cret", MARK_VAR: env[MARK_VAR]} for _, env in inits)
    # one nonce for every runner command of a build, 128 random bits
    marks = {env.get(MARK_VAR) for _, env in t.commands}
    assert len(marks) == 1 and re.fullmatch(r"[0-9a-f]{32}", marks.pop())
    assert not any("s3cret" in c for c, _ in t.commands)
    r = run(t, amifile, build_args={"TOKEN": "other"})
    # The key changes with the value; the tags hold no digest of it (amic:in:args names the
    # ARGs only), so the reason cannot name the ARG value: the layer still runs.
    assert r.layers[0].status == "RUN" and r.layers[0].reason != "args changed"
    first, second = (t.images[k].tags for k in (r1.layers[0].key, r.layers[0].key))
    assert r1.layers[0].key != r.layers[0].key
    assert first["amic:in:args"] == second["amic:in:args"]


@pytest.mark.parametrize("policy, snaps", [
    ("none", ["snapshot final"]),
    ("last", ["snapshot c", "snapshot final"]),
    ("all", ["snapshot a", "snapshot b", "snapshot c", "snapshot final"]),
    ("a", ["snapshot a", "snapshot c", "snapshot final"]),
    ("auto", ["snapshot c", "snapshot final"]),
])
def test_checkpoint_policy(amifile, policy, snaps):
    t = FakeTarget()
    run(t, amifile, checkpoint=policy)
    assert [e for e in t.events if e.startswith("snapshot")] == snaps


def test_checkpoint_policy_rules():
    assert parse_checkpoint("a,b", ("a", "b", "c")) == frozenset({"a", "b"})
    with pytest.raises(UsageError, match="unknown: x"):
        parse_checkpoint("x", ("a",))
    assert should_checkpoint("auto", service="a", last=False, uncheckpointed_seconds=5,
                             snapshot_seconds=2)
    assert not should_checkpoint("auto", service="a", last=False, uncheckpointed_seconds=1,
                                 snapshot_seconds=2)
    assert not should_checkpoint("none", service="a", last=True, uncheckpointed_seconds=9,
                                 snapshot_seconds=0)


def test_failure_names_service_line_and_tail_and_cleans_up(amifile):
    t = FakeTarget()
    t.fail_in = "b"
    with pytest.raises(BuildError) as err:
        run(t, amifile)
    text = str(err.value)
    assert "service b failed (exit 3) at" in text and "Amifile:8" in text
    assert "INIT echo b" in text  # the Amifile line
    assert "b is broken" in text  # the output tail
    assert t.events[-1] == "release (error)"
    assert "snapshot final" not in t.events
    # a's checkpoint survived: the next build starts from it
    t.fail_in = None
    t.events.clear()
    r = run(t, amifile)
    assert statuses(r)[0] == ("a", "CACHED")


def test_on_error_abort_keeps_machine_and_says_how_to_reach_it(amifile):
    t = FakeTarget()
    t.fail_in = "c"
    with pytest.raises(BuildError, match="ssh fake-machine"):
        run(t, amifile, on_error="abort")
    assert t.events[-1] == "kept"


def test_interrupt_unwinds_in_reverse_order(amifile, monkeypatch, tmp_path):
    import amic.engine.build as engine

    created: list[Path] = []
    real = engine.write_artifact

    def spy(b):
        path = real(b)
        created.append(path)
        b.stack.callback(t.events.append, "artifact removed")
        return path

    monkeypatch.setattr(engine, "write_artifact", spy)
    t = FakeTarget()
    t.interrupt_in = "b"
    with pytest.raises(KeyboardInterrupt):
        run(t, amifile)
    assert t.events[-2:] == ["release (error)", "artifact removed"]
    assert created
    assert not list(Path(tempfile.gettempdir()).glob("amic-stage2-*")), "artifact leaked"
    assert all(img.tags[TAG_KIND] == "layer" for img in t.images.values())


def test_result_json_shape(amifile):
    r = run(FakeTarget(), amifile)
    doc = r.to_json()
    assert set(doc) >= {"image_id", "final_key", "layers", "timings", "cached", "target"}
    assert doc["layers"][0]["status"] == "RUN" and doc["layers"][0]["seconds"] is not None
    assert doc["timings"]["total"] >= 0


def test_in_place_target_makes_no_image_and_keeps_host_identity(amifile):
    t = FakeTarget()
    t.keeps_images = False
    r = run(t, amifile)
    assert statuses(r) == [("a", "RUN"), ("b", "RUN"), ("c", "RUN")]
    assert not any(e.startswith("snapshot") for e in t.events)
    commands = " ".join(c for c, _ in t.commands)
    assert "install-boot-hook" in commands and "prepare-image" not in commands
    assert r.image_id == "base-1"


# -- the build memo ----------------------------------------------------------------


class MemoTarget(FakeTarget):
    fast_rebuild = True

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = marker

    def memo_paths(self, base, image):
        return [str(self.marker)]


def _age(path: Path, seconds: float = 10) -> None:
    import os
    import time

    t = time.time() - seconds
    os.utime(path, (t, t))


def test_check_final_refuses_before_any_lookup_lease_or_launch(amifile):
    """The target's ``check_final`` hook gets the final key and the final image's tags once
    the plan is made; raising there stops the build before anything else, cached or not."""

    class Picky(FakeTarget):
        refuse = True

        def __init__(self):
            super().__init__()
            self.checked = []

        def check_final(self, key, tags):
            self.checked.append((key, dict(tags)))
            if self.refuse:
                raise BuildError("that name is taken")

        def find_image(self, key):
            self.events.append(f"find {key[:8]}")
            return super().find_image(key)

        def lease(self, key, *, build_id="?"):
            self.events.append(f"lease {key[:8]}")
            return super().lease(key, build_id=build_id)

    t = Picky()
    with pytest.raises(BuildError, match="that name is taken"):
        run(t, amifile, name="shop")
    assert t.events == [] and len(t.checked) == 1
    t.refuse = False
    r = run(t, amifile, name="shop")
    key, tags = t.checked[-1]
    assert key == r.final_key
    assert tags == dict(t.images[r.final_key].tags)   # the tags the final image got
    assert tags[TAG_KIND] == "final" and tags["amic:name"] == "shop"
    t.refuse, t.events[:] = True, []
    with pytest.raises(BuildError):          # a cached final is refused all the same
        run(t, amifile, name="shop")
    assert t.events == []


def test_memo_answers_unchanged_and_notices_changes(tmp_path, monkeypatch):
    import time

    from amic.engine import memo as buildmemo

    (tmp_path / "proj").mkdir()
    amifile = tmp_path / "proj" / "Amifile"
    amifile.write_text(AMIFILE)

    monkeypatch.setenv("AMIC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TOKEN", raising=False)
    marker = tmp_path / "image-meta"
    marker.write_text("x")
    time.sleep(0.06)  # inputs must be older than the build that records them
    t = MemoTarget(marker)
    r = run(t, amifile)
    memo = buildmemo.lookup(str(amifile), {}, "fake")
    assert memo and memo["image_id"] == r.image_id and memo["cached"]
    assert [x["status"] for x in memo["layers"]] == ["CACHED"] * 3
    # an ARG value from the environment is part of it (as a digest only)
    monkeypatch.setenv("TOKEN", "new")
    assert buildmemo.lookup(str(amifile), {}, "fake") is None
    monkeypatch.delenv("TOKEN")
    assert "new" not in Path(buildmemo.memo_path(str(amifile), {}, "fake")).read_text()
    # the image going away (the target's path) invalidates it
    marker.unlink()
    assert buildmemo.lookup(str(amifile), {}, "fake") is None
    marker.write_text("x")
    _age(marker)
    # so does touching the Amifile
    run(t, amifile)
    assert buildmemo.lookup(str(amifile), {}, "fake") is not None
    # a file written beside the Amifile (a --manifest, an editor's swap file) is no input
    (amifile.parent / "result.json").write_text("{}")
    assert buildmemo.lookup(str(amifile), {}, "fake") is not None
    amifile.write_text(AMIFILE + "\n")
    assert buildmemo.lookup(str(amifile), {}, "fake") is None


def test_memo_not_recorded_for_inputs_newer_than_the_build(amifile, tmp_path, monkeypatch):
    from amic.engine import memo as buildmemo

    monkeypatch.setenv("AMIC_CACHE_DIR", str(tmp_path / "cache"))
    marker = tmp_path / "image-meta"
    marker.write_text("x")
    t = MemoTarget(marker)
    monkeypatch.setattr("time.time_ns", lambda: 0)  # the build "started" before every input
    run(t, amifile)
    assert buildmemo.lookup(str(amifile), {}, "fake") is None


def test_memo_keeps_the_targets_facts(tmp_path, monkeypatch):
    import time

    from amic.engine import memo as buildmemo

    class FactsTarget(MemoTarget):
        def memo_facts(self, base_ref, base, image):
            return {"base_ref": base_ref, "base": base.id}

    (tmp_path / "proj").mkdir()
    amifile = tmp_path / "proj" / "Amifile"
    amifile.write_text(AMIFILE)
    monkeypatch.setenv("AMIC_CACHE_DIR", str(tmp_path / "cache"))
    marker = tmp_path / "image-meta"
    marker.write_text("x")
    time.sleep(0.06)
    r = run(FactsTarget(marker), amifile)
    result, facts = buildmemo.lookup_with_facts(str(amifile), {}, "fake")
    assert result["image_id"] == r.image_id
    assert facts == {"base_ref": "debian:12", "base": r.base_image_id}


def test_memo_answer_is_the_whole_fast_path(tmp_path, monkeypatch):
    """``memo.answer``: the recorded result with its lines said through the reporter; a
    target's refusal, --no-cache or --context mean the full build (None)."""
    import io
    import time

    from amic.engine import memo as buildmemo
    from amic.engine.progress import Reporter

    (tmp_path / "proj").mkdir()
    amifile = tmp_path / "proj" / "Amifile"
    amifile.write_text(AMIFILE)
    monkeypatch.setenv("AMIC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("TOKEN", raising=False)
    marker = tmp_path / "image-meta"
    marker.write_text("x")
    time.sleep(0.06)
    r = run(MemoTarget(marker), amifile)

    def answer(stream, **kw):
        reporter = Reporter(stream, mode="plain", quiet=kw.pop("quiet", False))
        kw = {"checkpoint": None, "no_cache": False, "context": None, **kw}
        return buildmemo.answer(str(amifile), {}, "fake", reporter=reporter, **kw)

    out = io.StringIO()
    result, made = answer(out)
    assert result["image_id"] == r.image_id and made is None
    assert set(result["timings"]) == {"total"}
    lines = out.getvalue().splitlines()
    assert [line.split()[:3] for line in lines[:3]] == [
        [f"[{i}/3]", svc, "CACHED"] for i, svc in enumerate("abc", 1)]
    assert lines[3] == f"amic: unchanged: image {r.image_id[:12]} (final key {r.final_key[:12]})"
    quiet = io.StringIO()
    assert answer(quiet, quiet=True)[0] is not None and quiet.getvalue() == ""

    class Refuses(MemoTarget):
        def confirm_memo(self, result, facts):
            return False

    refuses = Refuses(marker)
    silent = io.StringIO()
    assert answer(silent, confirm=lambda: refuses) == (None, refuses)
    assert silent.getvalue() == ""
    assert answer(io.StringIO(), confirm=lambda: MemoTarget(marker))[0] is not None
    assert answer(io.StringIO(), no_cache=True) == (None, None)
    assert answer(io.StringIO(), context=str(tmp_path)) == (None, None)


def test_memo_schemes_match_the_target_classes():
    """``amic.targets.MEMO`` lets the command line use the memo before importing a target."""
    import importlib

    from amic.targets import MEMO, REGISTRY

    for scheme, entry in REGISTRY.items():
        module, _, name = entry.partition(":")
        cls = getattr(importlib.import_module(module), name)
        assert cls.fast_rebuild == (scheme in MEMO), scheme
        if scheme in MEMO:
            assert MEMO[scheme] == (cls.confirm_memo is not Target.confirm_memo), scheme


class _RacingTarget(FakeTarget):
    """Another build holds the lease of a key and makes its image while we wait for it."""

    def __init__(self, made_elsewhere: dict) -> None:
        super().__init__()
        self.made_elsewhere = made_elsewhere
        self.leases: list[str] = []
        self.held: set[str] = set()

    def lease(self, key, *, build_id="?"):
        import contextlib

        @contextlib.contextmanager
        def held():
            assert key not in self.held
            self.leases.append(key)
            if key in self.made_elsewhere:   # the other build finished it while we waited
                self.images[key] = self.made_elsewhere.pop(key)
            self.held.add(key)
            try:
                yield
            finally:
                self.held.discard(key)
                self.events.append(f"unlease {key[:6]}")
        return held()


def test_lease_taken_in_chain_order_and_the_other_builds_layer_reused(amifile):
    other = FakeTarget()
    r0 = run(other, amifile, checkpoint="all")
    keys = [layer.key for layer in r0.layers]
    # The other build made layers a and b while we waited for a's lease.
    t = _RacingTarget({keys[0]: other.images[keys[0]], keys[1]: other.images[keys[1]]})
    r = run(t, amifile, checkpoint="all")
    assert statuses(r) == [("a", "CACHED"), ("b", "CACHED"), ("c", "RUN")]
    # a: taken, found made -> start over; b: same; then c and the final key
    assert t.leases == [keys[0], keys[1], keys[2], r.final_key]
    launches = [e for e in t.events if e.startswith("launch")]
    assert launches == ["launch img-2"]    # once, from the other build's layer b
    assert t.events.index("launch img-2") > t.events.index(f"unlease {keys[1][:6]}")
    # c's lease goes as soon as its checkpoint exists (a build sharing only a..c goes on
    # from it); the final key's is held until the machine is gone
    assert t.events[t.events.index("snapshot c") + 1] == f"unlease {keys[2][:6]}"
    assert t.events[-3:] == ["snapshot final", "release", f"unlease {r.final_key[:6]}"]


def test_a_layers_lease_waits_for_a_checkpoint_that_covers_it(amifile):
    """With no layer checkpoint (``--checkpoint none``: only the final image), every layer's
    lease is held to the end: nothing of the chain exists before the build is done."""
    t = _RacingTarget({})
    r = run(t, amifile, checkpoint="none")
    unleased = [e for e in t.events if e.startswith("unlease")]
    assert t.events.index("release") < t.events.index(unleased[0])
    assert len(unleased) == len(r.layers) + 1


def test_lease_of_the_final_key_finds_the_other_builds_image(amifile):
    other = FakeTarget()
    r0 = run(other, amifile, checkpoint="all")
    t = _RacingTarget({})
    t.images.update({k: v for k, v in other.images.items() if k != r0.final_key})
    t.made_elsewhere[r0.final_key] = other.images[r0.final_key]
    r = run(t, amifile, checkpoint="all")
    assert r.cached and r.image_id == r0.image_id
    assert not any(e.startswith("launch") for e in t.events)


class _LostLeaseTarget(_RacingTarget):
    """Its leases are confirmed together; the first confirmation finds one of them another
    build's, and that build made the key's image meanwhile."""

    def __init__(self, lost: str, made) -> None:
        super().__init__({})
        self.lost, self.made = lost, made
        self.confirmed: list[set[str]] = []

    def confirm_leases(self):
        self.confirmed.append(set(self.held))   # the leases held when confirmed
        if len(self.confirmed) > 1:
            return []
        self.images[self.lost] = self.made     # the build that really held it made it
        return [self.lost]


def test_a_lease_found_anothers_when_confirmed_makes_the_build_start_over(amifile):
    other = FakeTarget()
    r0 = run(other, amifile, checkpoint="all")
    keys = [layer.key for layer in r0.layers]
    t = _LostLeaseTarget(keys[1], other.images[keys[1]])
    r = run(t, amifile, checkpoint="all")
    # nothing was launched on the lost lease: the build started over from b's image
    assert statuses(r) == [("a", "CACHED"), ("b", "CACHED"), ("c", "RUN")]
    assert t.leases == [keys[0], keys[1], keys[2], r0.final_key, keys[2], r0.final_key]
    assert t.confirmed == [set(t.leases[:4]), {keys[2], r0.final_key}]
    assert [e for e in t.events if e.startswith("launch")] == ["launch img-2"]
    assert t.events.index("launch img-2") > t.events.index(f"unlease {keys[0][:6]}")
