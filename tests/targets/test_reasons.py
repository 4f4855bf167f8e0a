"""Why a layer ran, from the project's own history only, on the local and ec2 targets.

Three projects share one store (or one EC2 account) and the service names ``a``, ``b``,
``c``; each is told apart by its identity (``amic:project``, here from ``--name``):

- a project's first build says ``first build`` for every layer, also the dry run before it;
- a second project whose ``a`` differs from the first project's ``a`` still says ``first
  build`` (not ``init changed``: another project's layer says nothing about this one);
- a project whose earlier build kept only its final image (``--checkpoint none``) says
  ``no checkpoint kept`` for the layer it could not compare, then ``parent changed``;
- a project that kept checkpoints names the input that changed.
"""

from __future__ import annotations

import io

import pytest
from amic.engine.build import BuildOptions, build
from amic.engine.dryrun import dry_run
from amic.engine.progress import Reporter

AMIFILE = """\
FROM debian:12

SERVICE a
    INIT echo a-v1 > /etc/reasons-a

SERVICE b
    REQUIRES a
    INIT echo b-v1 > /etc/reasons-b

SERVICE c
    REQUIRES b
    INIT echo c-v1 > /etc/reasons-c
"""


@pytest.fixture(scope="module", params=["local", "ec2"])
def subject(request, amic_cache):
    return request.getfixturevalue(f"{request.param}_subject")


def options(subject, text: str, name: str, **kw) -> BuildOptions:
    (subject.workdir / "Amifile").write_text(text)
    return BuildOptions(amifile=str(subject.workdir / "Amifile"), name=name, **kw)


def reasons(subject, text: str, name: str, **kw) -> list[tuple[str, str]]:
    result = build(subject.make(), options(subject, text, name, **kw),
                   Reporter(io.StringIO(), mode="plain"))
    return [(x.status, x.reason) for x in result.layers]


def planned(subject, text: str, name: str) -> list[tuple[str, str]]:
    plan = dry_run(subject.make(), options(subject, text, name),
                   Reporter(io.StringIO(), mode="plain"))
    return [(x.status, x.reason) for x in plan.layers]


def test_reasons_come_from_the_projects_own_history(subject):
    first = [("RUN", "first build")] * 3
    assert planned(subject, AMIFILE, "reasons-one") == first
    assert reasons(subject, AMIFILE, "reasons-one", checkpoint="all") == first

    # another project, same service names, a's INIT differs from reasons-one's
    other = AMIFILE.replace("a-v1", "a-v2")
    assert planned(subject, other, "reasons-two") == first
    assert reasons(subject, other, "reasons-two", checkpoint="all") == first

    # reasons-one again, b changed: compared with its own checkpoints
    changed = reasons(subject, AMIFILE.replace("b-v1", "b-v9"), "reasons-one", checkpoint="all")
    assert changed == [("CACHED", changed[0][1]), ("RUN", "init changed"),
                       ("RUN", "parent changed (b re-ran)")]


def test_an_earlier_build_without_checkpoints_is_not_a_first_build(subject):
    bare = AMIFILE.replace("-v1", "-bare")     # keys no other test built (keys are shared)
    assert reasons(subject, bare, "reasons-bare", checkpoint="none") == \
        [("RUN", "first build")] * 3
    # only the final image was kept: nothing to compare a with, and not a first build
    expected = [("RUN", "no checkpoint kept"), ("RUN", "parent changed (a re-ran)"),
                ("RUN", "parent changed (a re-ran)")]
    text = bare.replace("c-bare", "c-bare2")
    assert planned(subject, text, "reasons-bare") == expected
    assert reasons(subject, text, "reasons-bare", checkpoint="none") == expected
