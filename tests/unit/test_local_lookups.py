"""The local target's look-ups of a build's keys (issue 18: a dry run of a large Amifile
opened a file per layer). ``plan_lookups`` lists the store's keys once; the look-ups before
the first lease answer from that list, and a lease forgets it (the holder may have made
the image meanwhile), as the ec2 target's do."""

from __future__ import annotations

from amic.targets.local.target import LocalTarget


def test_keys_listed_once_then_fresh_after_a_lease(tmp_path):
    target = LocalTarget(store=tmp_path / "store")
    target.plan_lookups(["k1", "k2"], ["a", "b"])          # an empty store: nothing cached
    assert target.find_image("k1") is None
    made = target.store.commit({"key": "k1", "parent": None, "tags": {}}, None)
    assert target.find_image("k1") is None                 # the list of before the build
    with target.lease("k1", build_id="t"):
        assert target.find_image("k1").id == made.id       # after a lease: looked up again
    target.plan_lookups(["k1", "k2"], ["a", "b"])
    assert target.find_image("k1").id == made.id and target.find_image("k2") is None
    other = LocalTarget(store=tmp_path / "store")           # without a list: each looked up
    assert other.find_image("k1").id == made.id
