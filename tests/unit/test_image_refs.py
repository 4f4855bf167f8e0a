"""Image references on the local target (``amic.targets.local.refs``): ``latest`` is this
project's, ``NAME:latest``, ``NAME@ID`` and id prefixes; errors name the candidates."""

from __future__ import annotations

import pytest

from amic.contract import KIND_FINAL, KIND_LAYER, TAG_KIND, TAG_NAME, TAG_PROJECT
from amic.errors import UsageError
from amic.project import Project
from amic.targets.base import Image
from amic.targets.local import refs

STACK = Project("p-" + "a" * 24, "stack")
PYWEB = Project("p-" + "b" * 24, "pyweb")
FORK = Project("p-" + "c" * 24, "pyweb")       # another repository's project called pyweb


def image(ident: str, created: str, project: Project | None, kind: str = KIND_FINAL,
          name: str | None = None) -> Image:
    tags = {TAG_KIND: kind, TAG_NAME: name or (project.name if project else "old")}
    if project is not None and project.id:
        tags[TAG_PROJECT] = project.id
    return Image(id=ident * 8, key=None, tags=tags, created=created)


IMAGES = [
    image("1111aaaa", "2026-01-01", STACK),
    image("2222aaaa", "2026-01-02", STACK),
    image("3333bbbb", "2026-01-03", PYWEB),          # the newest of all: pyweb's
    image("4444bbbb", "2026-01-04", PYWEB, KIND_LAYER),
    image("5555cccc", "2026-01-02", FORK),
    image("6666dddd", "2026-01-05", None, name="legacy"),
]


def ids(img: Image) -> str:
    return img.id[:8]


def test_latest_is_this_projects_newest_never_another_projects():
    assert ids(refs.resolve(IMAGES, "latest", project=STACK)) == "2222aaaa"
    assert ids(refs.resolve(IMAGES, "latest", project=PYWEB)) == "3333bbbb"
    assert ids(refs.resolve(IMAGES, "latest", project=FORK)) == "5555cccc"
    # a project without an identity: its finals without amic:project, by name
    assert ids(refs.resolve(IMAGES, "latest", project=Project(None, "legacy"))) == "6666dddd"


def test_latest_of_a_project_without_images_refuses_and_lists_others():
    with pytest.raises(UsageError) as err:
        refs.resolve(IMAGES, "latest", project=Project("p-" + "e" * 24, "new"))
    text = str(err.value)
    assert "project new has no local image yet" in text and "amic build" in text
    assert "stack@2222aaaa2222" in text and "pyweb@3333bbbb3333" in text


def test_latest_without_a_project_refuses():
    with pytest.raises(UsageError, match="no ./Amifile here.*--file AMIFILE.*stack@"):
        refs.resolve(IMAGES, "latest", project=None)


def test_name_latest():
    assert ids(refs.resolve(IMAGES, "stack:latest")) == "2222aaaa"
    assert ids(refs.resolve(IMAGES, f"{FORK.id}:latest")) == "5555cccc"
    # two projects called pyweb: this project's if it is one of them, else an error
    assert ids(refs.resolve(IMAGES, "pyweb:latest", project=FORK)) == "5555cccc"
    with pytest.raises(UsageError) as err:
        refs.resolve(IMAGES, "pyweb:latest", project=STACK)
    text = str(err.value)
    assert "pyweb:latest is ambiguous" in text
    assert "pyweb@3333bbbb3333" in text and "pyweb@5555cccc5555" in text
    with pytest.raises(UsageError, match="no local image named 'nope'.*stack@2222"):
        refs.resolve(IMAGES, "nope:latest")
    with pytest.raises(UsageError, match="the only tag is 'latest'"):
        refs.resolve(IMAGES, "stack:v1")


def test_name_at_id():
    assert ids(refs.resolve(IMAGES, "stack@1111")) == "1111aaaa"
    with pytest.raises(UsageError, match="named stack, not 'pyweb'"):
        refs.resolve(IMAGES, "pyweb@1111")


def test_id_prefixes():
    assert ids(refs.resolve(IMAGES, "4444bb")) == "4444bbbb"      # any kind by id
    assert ids(refs.resolve(IMAGES, "sha256:3333")) == "3333bbbb"
    extra = [*IMAGES, image("1111aaab", "2026-01-09", STACK)]
    with pytest.raises(UsageError) as err:
        refs.resolve(extra, "1111aaa")
    assert "ambiguous: 1111aaaa1111 (final stack), 1111aaab1111 (final stack)" in str(err.value)
    with pytest.raises(UsageError, match="no local image '9999'"):
        refs.resolve(IMAGES, "9999")


@pytest.mark.parametrize("ref", ["stack", "../x", "a b", "", "@", "abc"])
def test_other_words_refuse_with_the_grammar(ref):
    with pytest.raises(UsageError) as err:
        refs.resolve(IMAGES, ref)
    assert "NAME:latest" in str(err.value) or "id" in str(err.value)


def test_a_bare_name_says_to_add_latest():
    with pytest.raises(UsageError, match="say stack:latest"):
        refs.resolve(IMAGES, "stack")
