"""INCLUDE and REQUIRES resolution: order, enabled set, and every error."""

from __future__ import annotations

import pytest

from amic.amifile import resolve
from amic.errors import AmifileError


def load(write_tree, text: str, **extra: str):
    root = write_tree({"Amifile": text, **extra})
    return resolve.load(root / "Amifile")


def names(resolved):
    return [s.name for s in resolved.services]


def test_order_is_topological_with_ties_by_declaration(write_tree):
    r = load(write_tree, """\
SERVICE web
    REQUIRES db cache
SERVICE cache
SERVICE db
SERVICE admin
    REQUIRES db
""")
    # cache and db are ready first: cache was declared before db.
    assert names(r) == ["cache", "db", "web", "admin"]
    assert r.enabled == ("cache", "db", "web", "admin")


def test_enable_selects_services_and_their_dependencies(write_tree):
    r = load(write_tree, """\
ENABLE web
SERVICE base
SERVICE web
    REQUIRES base
SERVICE test
    REQUIRES web
""")
    assert r.enabled == ("base", "web")
    assert names(r) == ["base", "web", "test"]


def test_unknown_requirement_names_service_and_suggests(write_tree):
    with pytest.raises(AmifileError) as exc:
        load(write_tree, "SERVICE httpd\nSERVICE web\n    REQUIRES httdp\n")
    err = exc.value
    assert "service 'web' requires unknown service 'httdp'" in err.message
    assert "did you mean 'httpd'" in err.message
    assert (err.pos.line, err.pos.col) == (3, 14)
    assert "REQUIRES httdp" in err.render()


def test_cycle_names_the_chain(write_tree):
    with pytest.raises(AmifileError) as exc:
        load(write_tree, "SERVICE web\n  REQUIRES httpd\nSERVICE httpd\n  REQUIRES app\n"
                         "SERVICE app\n  REQUIRES web\n")
    assert "REQUIRES cycle: web -> httpd -> app -> web" in exc.value.message


def test_self_requirement(write_tree):
    with pytest.raises(AmifileError, match="web -> web"):
        load(write_tree, "SERVICE web\n  REQUIRES web\n")


def test_duplicate_service_across_include(write_tree):
    with pytest.raises(AmifileError) as exc:
        load(write_tree, "INCLUDE ./common.amifile\nSERVICE web\n",
             **{"common.amifile": "SERVICE web\n"})
    assert "service 'web' is defined twice" in exc.value.message
    assert "common.amifile:1" in exc.value.message


def test_include_relative_path_and_directory(write_tree):
    r = load(write_tree, "INCLUDE ./lib/db.amifile\nINCLUDE ./cache\nSERVICE web\n  REQUIRES db cache\n",
             **{"lib/db.amifile": "SERVICE db\n", "cache/Amifile": "SERVICE cache\n"})
    assert names(r) == ["db", "cache", "web"]
    # Included services are not enabled unless required or named.
    assert r.enabled == ("db", "cache", "web")


def test_included_services_only_enabled_when_required(write_tree):
    r = load(write_tree, "INCLUDE ./x.amifile\nSERVICE web\n", **{"x.amifile": "SERVICE extra\n"})
    assert r.enabled == ("web",)


def test_include_cycle_is_caught(write_tree):
    with pytest.raises(AmifileError) as exc:
        load(write_tree, "INCLUDE ./a.amifile\n", **{"a.amifile": "INCLUDE ./b.amifile\n",
                                                    "b.amifile": "INCLUDE ./a.amifile\n"})
    assert "INCLUDE cycle" in exc.value.message
    assert "a.amifile -> " in exc.value.message and exc.value.message.endswith("a.amifile")


def test_same_file_included_twice_is_included_once(write_tree):
    r = load(write_tree, "INCLUDE ./a.amifile\nINCLUDE ./b.amifile\n",
             **{"a.amifile": "INCLUDE ./common.amifile\nSERVICE a\n",
                "b.amifile": "INCLUDE ./common.amifile\nSERVICE b\n",
                "common.amifile": "SERVICE common\n"})
    assert names(r) == ["common", "a", "b"]


def test_missing_include_file(write_tree):
    with pytest.raises(AmifileError, match="no such file"):
        load(write_tree, "INCLUDE ./nope.amifile\n")


def test_stock_service_by_name(write_tree):
    r = load(write_tree, "INCLUDE httpd\nSERVICE web\n  REQUIRES httpd\n")
    assert names(r) == ["httpd", "web"]
    assert r.service("httpd").pos.file.endswith("httpd/Amifile")


def test_unknown_stock_service_suggests(write_tree):
    with pytest.raises(AmifileError) as exc:
        load(write_tree, "INCLUDE htpd\n")
    assert "no stock service named 'htpd'; did you mean 'httpd'?" in exc.value.message


def test_user_services_path_comes_first(write_tree, monkeypatch, tmp_path):
    own = tmp_path / "mine"
    (own / "httpd").mkdir(parents=True)
    (own / "httpd" / "Amifile").write_text("SERVICE httpd\n  PACKAGES lighttpd\n")
    monkeypatch.setenv("AMIC_SERVICES_PATH", str(own))
    r = load(write_tree, "INCLUDE httpd\n")
    assert r.service("httpd").packages == ("lighttpd",)


def test_from_in_included_file_is_an_error(write_tree):
    with pytest.raises(AmifileError, match="only allowed in the top Amifile"):
        load(write_tree, "INCLUDE ./x.amifile\n", **{"x.amifile": "FROM debian:12\n"})


def test_enable_unknown_service(write_tree):
    with pytest.raises(AmifileError, match="ENABLE names unknown service 'wbe'; did you mean 'web'"):
        load(write_tree, "ENABLE wbe\nSERVICE web\n")


def test_every_stock_service_resolves(write_tree):
    for name in resolve.stock_service_names():
        r = load(write_tree, f"INCLUDE {name}\n")
        assert name in names(r)
    assert {"httpd", "nginx", "perl", "python", "nodejs"} <= set(resolve.stock_service_names())


def test_global_secrets_of_included_files_are_collected(write_tree):
    # an INCLUDEd file's global SECRET reaches the plan (compile --json lists it), once
    from amic.compile import plan as planmod

    root = write_tree({
        "common/db.amifile": "SECRET DB_PASSWORD\nSERVICE db\n    INIT true\n",
        "Amifile": "INCLUDE common/db.amifile\nSECRET DEPLOY_TOKEN\nSECRET DB_PASSWORD\n"
                   "SERVICE web\n    REQUIRES db\n    INIT true\n",
    })
    resolved = resolve.load(str(root / "Amifile"))
    assert [s.name for s in resolved.secrets] == ["DB_PASSWORD", "DEPLOY_TOKEN"]
    plan = planmod.make_plan(resolved, {})
    assert set(plan.secret_names()) == {"DB_PASSWORD", "DEPLOY_TOKEN"}
