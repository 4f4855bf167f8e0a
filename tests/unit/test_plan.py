"""Cache-key properties: what must and must not change a layer key."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from amic.compile import plan

from amic.amifile import resolve

BASE = """\
FROM debian:12
ARG TOKEN
ENV APP=/srv/app
SERVICE httpd
    PACKAGES apache2
    INIT echo httpd
    UPDATE echo httpd update
SERVICE app
    REQUIRES httpd
    PACKAGES jq curl
    COPY files/ /srv/app
    INIT <<~EOF
        echo app init
    EOF
    UPDATE echo app update
SERVICE worker
    REQUIRES app
    INIT echo worker
"""


def make(write_tree, text=BASE, files=None, build_args=None, **kw):
    root = write_tree({"Amifile": text, "files/run.sh": "echo run\n", **(files or {})})
    r = resolve.load(root / "Amifile")
    return plan.make_plan(r, build_args if build_args is not None else {"TOKEN": "t1"},
                          environ={}, **kw)


def keys(p):
    return [layer.key for layer in p.layers]


def test_one_layer_per_enabled_service_in_order(write_tree):
    p = make(write_tree)
    assert [layer.service for layer in p.layers] == ["httpd", "app", "worker"]
    assert p.layers[1].parent_key == p.layers[0].key
    assert p.layers[0].parent_key == p.base_key


def test_same_input_same_keys(write_tree, tmp_path):
    a = make(write_tree)
    b = make(write_tree)
    assert keys(a) == keys(b) and a.final_key == b.final_key


def test_update_change_keeps_layer_keys_changes_final(write_tree):
    a = make(write_tree)
    b = make(write_tree, BASE.replace("echo app update", "echo app update v2"))
    assert keys(a) == keys(b)
    assert a.final_key != b.final_key


def test_init_change_changes_that_layer_and_later_only(write_tree):
    a = make(write_tree)
    b = make(write_tree, BASE.replace("echo app init", "echo app init v2"))
    assert keys(a)[0] == keys(b)[0]
    assert keys(a)[1] != keys(b)[1]
    assert keys(a)[2] != keys(b)[2]
    assert b.layers[1].inputs["init"] != a.layers[1].inputs["init"]
    assert b.layers[2].inputs["init"] == a.layers[2].inputs["init"]
    assert b.layers[2].inputs["parent"] != a.layers[2].inputs["parent"]


def test_whitespace_and_comments_outside_scripts_keep_keys(write_tree):
    a = make(write_tree)
    noisy = "# a comment\n\n" + BASE.replace("SERVICE app\n", "\n# the app\nSERVICE   app\n") \
        .replace("    PACKAGES jq curl", "  packages   jq \\\n      curl")
    b = make(write_tree, noisy)
    assert keys(a) == keys(b) and a.final_key == b.final_key


def test_package_order_does_not_matter(write_tree):
    a = make(write_tree)
    b = make(write_tree, BASE.replace("PACKAGES jq curl", "PACKAGES curl jq"))
    assert keys(a) == keys(b)


def test_packages_inherited_from_requirements_are_not_repeated(write_tree):
    p = make(write_tree, BASE.replace("PACKAGES jq curl", "PACKAGES jq apache2 curl"))
    assert p.service("app").packages == ("curl", "jq")


def test_copy_content_change_changes_key(write_tree):
    a = make(write_tree)
    b = make(write_tree, files={"files/run.sh": "echo run v2\n"})
    assert keys(a)[0] == keys(b)[0] and keys(a)[1] != keys(b)[1]
    assert a.layers[1].inputs["copy"] != b.layers[1].inputs["copy"]


def test_copy_mode_change_changes_key(write_tree, tmp_path):
    a = make(write_tree)
    (tmp_path / "files/run.sh").chmod(0o755)
    r = resolve.load(tmp_path / "Amifile")
    b = plan.make_plan(r, {"TOKEN": "t1"}, environ={})
    assert keys(a)[1] != keys(b)[1]


def test_copy_destination_change_changes_key(write_tree):
    a = make(write_tree)
    b = make(write_tree, BASE.replace("/srv/app\n", "/opt/app\n"))
    assert keys(a)[1] != keys(b)[1]


def test_arg_value_changes_keys_but_is_not_in_them(write_tree):
    a = make(write_tree, build_args={"TOKEN": "secret-one"})
    b = make(write_tree, build_args={"TOKEN": "secret-two"})
    assert keys(a)[0] != keys(b)[0]
    import json
    assert "secret-one" not in json.dumps(a.to_json())


def test_env_change_changes_every_layer(write_tree):
    a = make(write_tree)
    b = make(write_tree, BASE.replace("ENV APP=/srv/app", "ENV APP=/opt/app"))
    assert all(x != y for x, y in zip(keys(a), keys(b)))


def test_base_image_id_chains_into_keys(write_tree):
    a = make(write_tree, base_image_id="ami-1")
    b = make(write_tree, base_image_id="ami-2")
    assert all(x != y for x, y in zip(keys(a), keys(b)))


def test_arg_values_precedence(write_tree):
    root = write_tree({"Amifile": "ARG A=default\nARG B\nARG C\nSERVICE s\n"})
    r = resolve.load(root / "Amifile")
    values, missing = plan.arg_values(r, {"A": "flag"}, {"A": "env", "B": "env"})
    assert values == {"A": "flag", "B": "env"} and missing == ["C"]


# ---------------------------------------------------------------- ARG scope and SECRET

SCOPED = BASE.replace("    REQUIRES httpd\n", "    REQUIRES httpd\n    ARG APP_VERSION=1\n    SECRET APP_TOKEN\n")


def test_a_service_arg_changes_its_layer_and_the_later_ones_only(write_tree):
    one = make(write_tree, SCOPED, build_args={"TOKEN": "t", "APP_VERSION": "1"})
    two = make(write_tree, SCOPED, build_args={"TOKEN": "t", "APP_VERSION": "2"})
    (h1, a1, w1), (h2, a2, w2) = keys(one), keys(two)
    assert h1 == h2 and a1 != a2 and w1 != w2
    assert one.final_key != two.final_key
    # the value is the service's alone: the environment of each layer's INIT
    assert two.layer_env("app") == {"TOKEN": "t", "APP_VERSION": "2"}
    assert two.layer_env("httpd") == two.layer_env("worker") == {"TOKEN": "t"}
    # the amic:in:args input names ARGs (and which are missing), never a digest of a value
    assert one.layers[1].inputs == two.layers[1].inputs


def test_a_global_arg_changes_every_layer(write_tree):
    one = make(write_tree, SCOPED, build_args={"TOKEN": "t1"})
    two = make(write_tree, SCOPED, build_args={"TOKEN": "t2"})
    assert all(x != y for x, y in zip(keys(one), keys(two)))


def test_an_amifile_without_service_args_keeps_its_keys(write_tree):
    # the ARG-scope change kept the key of every layer that has no ARG of its own
    a = make(write_tree)
    b = make(write_tree, BASE.replace("ARG TOKEN\n", "ARG TOKEN\nSECRET DEPLOY_KEY\n"))
    assert keys(a) == keys(b) and a.final_key == b.final_key


def test_secrets_are_in_no_key_and_named_per_service(write_tree):
    p = make(write_tree, SCOPED.replace("ARG TOKEN\n", "ARG TOKEN\nSECRET GLOBAL_KEY\n"),
             build_args={"TOKEN": "t"})
    plain = make(write_tree, SCOPED.replace("    SECRET APP_TOKEN\n", ""),
                 build_args={"TOKEN": "t"})
    assert keys(p) == keys(plain) and p.final_key == plain.final_key
    assert p.secret_names("app") == ("GLOBAL_KEY", "APP_TOKEN")
    assert p.secret_names("worker") == ("GLOBAL_KEY",)
    assert p.secret_names() == ("GLOBAL_KEY", "APP_TOKEN")


def test_missing_service_args_are_reported(write_tree):
    p = make(write_tree, SCOPED.replace("ARG APP_VERSION=1", "ARG APP_VERSION"))
    assert p.missing_args == ("APP_VERSION",)
    assert [a.name for a in p.declared_args] == ["TOKEN", "APP_VERSION"]
    assert p.to_json()["args"] == ["TOKEN", "APP_VERSION"]


@settings(max_examples=200, deadline=None)
@given(st.text(), st.lists(st.text(), max_size=3), st.lists(st.text(), max_size=3))
def test_hand_built_key_blobs_are_the_json_ones(name, inits, packages):
    """The own-hash and layer-key blobs a plan builds by hand (once per service, where the
    JSON encoder was most of its time) are byte for byte what ``_digest`` hashes."""
    p = plan
    rest = p._JSON.encode([packages, "c" * 64, inits, [["APP", "/srv"]]])
    assert p._own_blob(name, rest) == p._JSON.encode(
        (p.KEY_SCHEME, name, packages, "c" * 64, inits, [["APP", "/srv"]]))
    inputs = {k: f"{i:x}" * 64 for i, k in enumerate(
        ["runtime", "parent", "packages", "init", "env", "copy", "args"], 1)}
    others = {k: v for k, v in inputs.items() if k != "parent"}
    assert p._layer_blob(name, inputs["parent"], p._layer_parts(others, "d" * 64)) == \
        p._JSON.encode((p.KEY_SCHEME, "layer", name, inputs, "d" * 64))


def test_the_final_key_hashes_the_json_of_its_inputs(write_tree):
    """The final key is hashed as its JSON is made (a large plan's lists took 100 MB at
    once): the same digest as ``_digest`` of the lists."""
    for text in (SCOPED, "FROM debian:12\nLABEL a=b c=d\nSERVICE a\nSERVICE b\n    REQUIRES a\n"
                 "    UPDATE echo 'é'\n    UPDATE <<EOF\nx \\ \"y\"\nEOF\nSERVICE c\n"
                 "    REQUIRES a b\n"):
        p = make(write_tree, text)
        r = p.resolved
        assert p.final_key == plan._digest(
            plan.KEY_SCHEME, "final", p.layers[-1].key, p.runtime_hash, list(r.enabled),
            [(sp.service.name, [s.text for s in sp.service.updates]) for sp in p.services],
            [(sp.service.name, sp.own_hash, [q.name for q in sp.service.requires])
             for sp in p.services],
            sorted((label.key, label.value) for label in r.labels),
            plan._args_digest(*plan.arg_values(r, {"TOKEN": "t1"}, {})))
