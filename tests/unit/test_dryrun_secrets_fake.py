"""A dry run needs no SECRET value and names only the secrets of the layers that would run
(the fake target: a real build with the secret given, then dry runs without it)."""

from __future__ import annotations

import pytest
from amic.engine.build import BuildOptions, build
from amic.engine.dryrun import dry_run
from amic.errors import UsageError

from tests.harness.fake import FakeTarget

AMIFILE = """\
FROM debian:12
SECRET SHARED_TOKEN

SERVICE db
    SECRET DB_PASSWORD
    INIT echo db-{v}

SERVICE web
    REQUIRES db
    SECRET API_TOKEN
    INIT echo web-{v}
"""


def test_dry_run_names_the_secrets_of_the_layers_that_would_run(tmp_path):
    path = tmp_path / "Amifile"
    path.write_text(AMIFILE.format(v=1))
    target = FakeTarget()
    given = {"SHARED_TOKEN": "shared-value-1", "DB_PASSWORD": "db-value-1",
             "API_TOKEN": "api-value-1"}

    cold = dry_run(target, BuildOptions(amifile=str(path)))
    assert cold.would_run == ["db", "web"]
    assert [(s.name, s.services, s.given) for s in cold.secrets] == [
        ("SHARED_TOKEN", ("db", "web"), False), ("DB_PASSWORD", ("db",), False),
        ("API_TOKEN", ("web",), False)]
    assert "not given here (the build would refuse without them): SHARED_TOKEN, DB_PASSWORD, " \
           "API_TOKEN;" in cold.text()
    with pytest.raises(UsageError, match="SECRET without a value: SHARED_TOKEN"):
        build(target, BuildOptions(amifile=str(path)))        # the build still refuses
    assert target.events == []                                  # before launching anything

    build(target, BuildOptions(amifile=str(path), secrets=given))
    unchanged = dry_run(target, BuildOptions(amifile=str(path)))
    assert unchanged.final_image_id is not None and unchanged.secrets == ()
    assert "secrets" not in unchanged.text()

    path.write_text(AMIFILE.format(v=1).replace("web-1", "web-2"))
    partial = dry_run(target, BuildOptions(amifile=str(path), secrets={"API_TOKEN": "x" * 8}))
    assert partial.would_run == ["web"]
    assert [(s.name, s.services, s.given) for s in partial.secrets] == [
        ("SHARED_TOKEN", ("web",), False), ("API_TOKEN", ("web",), True)]
    assert partial.to_json()["secrets"][1] == {"name": "API_TOKEN", "services": ["web"],
                                               "given": True}
