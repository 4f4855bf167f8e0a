"""The project identity (``amic.cli.project``, ``contract.project_id``): one per project,
whatever the clone's folder, URL form or machine; never the same for two projects whose
folders share a name; read from ``.git`` without running git, safe on hostile checkouts."""

from __future__ import annotations

import os
import subprocess

import pytest

from amic import contract
from amic import project as proj

SAME = [
    "git@github.com:TeamA/app.git",
    "ssh://git@github.com/TeamA/app.git",
    "ssh://git@GitHub.com:22/TeamA/app.git/",
    "https://github.com/TeamA/app",
    "https://user:s3cret@github.com/TeamA/app.git",
    "http://GITHUB.COM./TeamA//app.git",
    "git+ssh://git@github.com/TeamA/app",
    "git://github.com/TeamA/app.git",
]


@pytest.mark.parametrize("url", SAME)
def test_every_form_of_one_remote_is_one_text(url):
    assert proj.normal_remote(url) == "github.com/TeamA/app"


def test_different_repositories_stay_different():
    texts = {proj.normal_remote(u) for u in (
        "git@github.com:TeamA/app.git", "git@github.com:TeamB/app.git",
        "git@gitlab.com:TeamA/app.git", "https://github.com/TeamA/app-infra")}
    assert len(texts) == 4
    assert proj.normal_remote("/srv/git/app.git") == "file:srv/git/app"
    assert proj.normal_remote("../app.git", "/home/u/src/app") == "file:home/u/src/app"
    assert proj.normal_remote("file:///srv/git/app.git/") == "file:srv/git/app"
    for bad in ("", "https://", "ssh://host/", "x" * 5000, "git@host:app\n[core]"):
        assert proj.normal_remote(bad) is None, bad


def test_credentials_never_reach_the_identity_text():
    assert "s3cret" not in proj.normal_remote("https://me:s3cret@example.com/a/b.git")


def test_config_values_are_read_as_git_reads_them():
    text = ('[core]\n\tbare = false\n[remote "upstream"]\n\turl = https://x.org/up.git\n'
            '[Remote "origin"] \n\tURL = "git@github.com:Team/app.git" ; comment\n'
            '\turl = https://second.example/ignored\n')
    assert proj.remote_url(text) == "git@github.com:Team/app.git"
    assert proj.remote_url('[remote "only"]\nurl = a:b # c\n') == "a:b"
    assert proj.remote_url('[remote "a"]\nurl=x:1\n[remote "b"]\nurl=x:2\n') is None
    assert proj.remote_url('[remote "origin"]\nfetch = +refs/*:refs/*\n') is None
    assert proj.config_value(r'"a b\"c" d ; e') == 'a b"c d'


def git(*args, cwd):
    env = {**os.environ, "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_CONFIG_SYSTEM": "/dev/null"}
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=env)


def clone(tmp_path, folder, remote, sub="app"):
    root = tmp_path / folder
    (root / sub).mkdir(parents=True)
    git("init", "-q", cwd=root)
    git("remote", "add", "origin", remote, cwd=root)
    amifile = root / sub / "Amifile"
    amifile.write_text("SERVICE web\nINIT true\n")
    return amifile


def test_two_clones_of_one_repository_are_one_project(tmp_path):
    a = clone(tmp_path, "work/checkout-one", "git@github.com:Team/app.git", sub="deploy")
    b = clone(tmp_path, "elsewhere/other-name", "https://github.com/Team/app", sub="deploy")
    assert proj.repo_origin(str(a)) == "github.com/Team/app//deploy/Amifile"
    pa, pb = proj.derive(str(a), None), proj.derive(str(b), None)
    assert pa.id == pb.id and pa.id.startswith("p-")
    assert pa.name == "deploy"


def test_two_projects_in_folders_called_app_are_two_projects(tmp_path):
    a = clone(tmp_path, "teamA", "git@github.com:TeamA/infra.git")
    b = clone(tmp_path, "teamB", "git@github.com:TeamB/infra.git")
    pa, pb = proj.derive(str(a), None), proj.derive(str(b), None)
    assert pa.name == pb.name == "app"
    assert pa.id != pb.id
    # an explicit name is part of a git project's identity, and names without git are shared
    assert proj.derive(str(a), "web").id not in (pa.id, proj.derive(str(b), "web").id)
    assert contract.project_id(None, "Web") == contract.project_id(None, "web")
    assert contract.project_id(None, None) is None


def test_worktrees_and_gitdir_files_find_the_common_config(tmp_path):
    main = clone(tmp_path, "main", "git@github.com:Team/app.git")
    env = {**os.environ, "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b",
           "GIT_COMMITTER_NAME": "a", "GIT_COMMITTER_EMAIL": "a@b"}
    root = main.parent.parent
    subprocess.run(["git", "add", "-A"], cwd=root, check=True, env=env)
    subprocess.run(["git", "commit", "-qm", "x"], cwd=root, check=True, env=env)
    subprocess.run(["git", "worktree", "add", "-q", str(tmp_path / "wt")], cwd=root, check=True,
                   env=env)
    assert (tmp_path / "wt" / ".git").is_file()
    assert proj.derive(str(tmp_path / "wt" / "app" / "Amifile"), None).id == \
        proj.derive(str(main), None).id


def test_no_git_no_name_is_no_identity(tmp_path):
    (tmp_path / "Amifile").write_text("SERVICE web\n")
    p = proj.derive(str(tmp_path / "Amifile"), None)
    assert p.id is None and p.origin is None


def test_hostile_checkouts_give_no_identity_and_never_block(tmp_path):
    amifile = clone(tmp_path, "r", "git@github.com:Team/app.git")
    config = tmp_path / "r" / ".git" / "config"
    # a config replaced by a FIFO: never opened for long, never read
    config.unlink()
    os.mkfifo(config)
    assert proj.repo_origin(str(amifile)) is None
    # a symlink to a file outside: not followed
    config.unlink()
    secret = tmp_path / "secret"
    secret.write_text('[remote "origin"]\nurl = git@github.com:Other/app.git\n')
    config.symlink_to(secret)
    assert proj.repo_origin(str(amifile)) is None
    # a huge config: not read past the limit
    config.unlink()
    with open(config, "wb") as fh:
        fh.truncate(proj.MAX_CONFIG + 1)
    assert proj.repo_origin(str(amifile)) is None
    # a .git that is a symlink or a device: no identity
    dotgit = tmp_path / "s" / ".git"
    (tmp_path / "s" / "app").mkdir(parents=True)
    dotgit.symlink_to(tmp_path / "r" / ".git")
    assert proj.repo_origin(str(tmp_path / "s" / "app" / "Amifile")) is None


@pytest.mark.root
def test_a_git_directory_someone_else_owns_gives_no_identity(tmp_path):
    # like git's safe.directory: a /tmp/.git planted by another user names no project
    amifile = clone(tmp_path, "planted", "git@github.com:Victim/app.git")
    os.chown(tmp_path / "planted" / ".git", 4242, 4242)
    assert proj.repo_origin(str(amifile)) is None


def test_the_identity_tag_is_never_the_one_left_out_on_ec2():
    from amic.targets.ec2 import naming
    from amic.targets.ec2.options import Ec2Options

    tags = {f"label{i}": "x" for i in range(60)}
    tags.update({"amic:project": "p-" + "a" * 24, "amic:name": "app", "amic:kind": "final"})
    new = naming.new_image(Ec2Options(), key="k" * 64, final=True, tags=tags, build_id="b",
                           user="admin", log=lambda _: None)
    assert len(new.tags) == 50 and new.tags["amic:project"] == "p-" + "a" * 24


def test_a_hostile_config_is_parsed_in_linear_time():
    import time

    text = ('[remote "origin"]\nurl = ' + "a\\\n" * 350000)[:proj.MAX_CONFIG]
    t0 = time.monotonic()
    url = proj.remote_url(text)
    # joining continued lines one by one was quadratic: ~12 s for this MiB, ~0.7 s now
    assert time.monotonic() - t0 < 5 and len(url) > 300000
