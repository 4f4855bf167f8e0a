"""Names, descriptions and tags of new AMIs (``--ami-name`` template fields, EC2's name rules).

The default final name ``{name}-{key}-{stamp}-{build_id}`` is unique by construction: the
project's name (``amic:name``), 12 hex of the final key, the UTC time to the millisecond and
the build id (which ends in random hex); at most 64 + 1 + 12 + 1 + 19 + 1 + 22 = 120 of
EC2's 128 characters. A template without a per-build field (``{stamp}``, ``{timestamp}``,
``{build_id}``) names one image per key: :func:`fixed_name` gives it before the build so
that ``amic build`` can check it with DescribeImages before anything is launched.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping

import attrs

from amic.contract import (KIND_FINAL, KIND_LAYER, TAG_AMIFILE, TAG_BUILD, TAG_KEY, TAG_KIND, TAG_NAME,
                           TAG_PROJECT, TAG_SERVICE)
from amic.errors import BuildError
from amic.targets.ec2 import session as aws
from amic.targets.ec2.options import Ec2Options

TAG_SSH_USER = "amic:ssh-user"
"""Login user of the image, inherited by every image baked from it."""

Log = Callable[[str], None]


# -- naming a new image ---------------------------------------------------------------

class NameFields(dict):
    """Template fields; an unknown ``{field}`` stays as written instead of failing the build."""

    def __missing__(self, key):
        return "{" + key + "}"


DEFAULT_NAME = "{name}-{key}-{stamp}-{build_id}"
PER_BUILD = ("stamp", "timestamp", "build_id")
"""Fields that differ between two builds of one key."""


def name_fields(tags: Mapping[str, str], key: str, build_id: str, when: dt.datetime) -> dict:
    amifile = tags.get(TAG_AMIFILE) or "amic"
    stem = re.sub(r"(?i)^amifile[._-]?|[._-]?amifile$", "", amifile) or "amic"
    when = when.astimezone(dt.UTC)
    # {amifile} is the stem ("amic" for a plain "Amifile": fit for names); {file} the file
    # name as it is, for descriptions
    return NameFields(amifile=stem, file=amifile, name=tags.get(TAG_NAME) or stem, key=key[:12],
                      build_id=build_id, timestamp=when.strftime("%Y%m%d-%H%M%S"),
                      stamp=when.strftime("%Y%m%dT%H%M%S.") + f"{when.microsecond // 1000:03d}Z",
                      date=when.strftime("%Y-%m-%d"),
                      label=NameFields({k: v for k, v in tags.items() if ":" not in k}))


def ami_name(text: str) -> str:
    """EC2 AMI names: 3-128 of letters, digits and ( ) [ ] space . / - ' @ _."""
    clean = re.sub(r"[^A-Za-z0-9()\[\] ./'@_-]", "-", text).strip()[:128]
    return clean if len(clean) >= 3 else f"amic-{clean}"


@attrs.frozen
class NewImage:
    """What a snapshot will be called and tagged."""

    name: str
    description: str
    tags: Mapping[str, str]
    final: bool = False
    snapshot_tags: Mapping[str, str] = attrs.field(default=None)
    """Tags of its snapshots: ``tags`` and ``--snapshot-tag`` (Packer's ``snapshot_tags``)."""

    def __attrs_post_init__(self) -> None:
        if self.snapshot_tags is None:
            object.__setattr__(self, "snapshot_tags", dict(self.tags))


def new_image(opts: Ec2Options, *, key: str, final: bool, tags: Mapping[str, str], build_id: str,
              user: str, log: Log) -> NewImage:
    """Name, description and tags of the image of a layer (``final``: of the build)."""
    fields = name_fields(tags, key, build_id, aws.now())
    if final:
        name = ami_name(opts.image_name.format_map(fields))
        description = opts.image_description.format_map(fields)[:255]
    else:
        svc = tags.get(TAG_SERVICE, "layer")
        # at most 32 + 7 + 24 + 1 + 12 + 1 + 19 + 1 + 22 = 119: the unique tail is never cut
        name = ami_name(f"{fields['name'][:32]}-layer-{svc[:24]}-{key[:12]}-{fields['stamp']}"
                        f"-{build_id}")
        description = (f"amic cache layer {svc} of {fields['name']} (key {key[:12]}) "
                       f"from {fields['file']}")[:255]
    all_tags = {**aws.resource_tags(build_id, ttl=None, role="image"), "Name": name,
                TAG_SSH_USER: user, **tags, TAG_KEY: key,
                TAG_KIND: tags.get(TAG_KIND, KIND_FINAL if final else KIND_LAYER)}
    if final:
        all_tags.update(opts.image_tags)
    all_tags, dropped = aws.fit_tags(all_tags, keep_prefixes=(
        TAG_KEY, TAG_KIND, aws.TAG_TOOL, TAG_BUILD, TAG_SSH_USER, TAG_AMIFILE, TAG_NAME,
        TAG_PROJECT, "Name"))   # amic:project: what prune selects on, never left out
    if dropped:
        log(f"warning: EC2 allows {aws.MAX_TAGS} tags per image; left out: " + ", ".join(dropped))
    snap_tags = dict(all_tags)
    if final:   # amic's own tags stay what they are: gc and the cache read them
        snap_tags.update({k: v for k, v in opts.snapshot_tags.items() if not k.startswith("amic:")})
        snap_tags, _ = aws.fit_tags(snap_tags, keep_prefixes=(TAG_KEY, TAG_KIND, aws.TAG_TOOL,
                                                              TAG_BUILD, "Name"))
    return NewImage(name, description, all_tags, final, snap_tags)


def fixed_name(template: str, tags: Mapping[str, str], key: str) -> str | None:
    """The final AMI name ``template`` gives every build of ``key``, or None when it has a
    per-build field (then two builds never collide)."""
    marker = "\0per-build\0"
    fields = name_fields(tags, key, marker, aws.now())
    fields.update({f: marker for f in PER_BUILD})
    text = template.format_map(fields)
    return None if marker in text else ami_name(text)


def check_name_free(ec2, name: str, key: str | None = None) -> None:
    """BuildError when an AMI of this account already has ``name`` (EC2 would refuse the
    CreateImage at the end of the build with InvalidAMIName.Duplicate), unless that AMI is
    the final image of ``key`` itself: the build's cached result, which it is about to
    find, not a name taken by another image (a fixed ``--ami-name`` rebuilt unchanged)."""
    found = aws.call("looking up the AMI name", ec2.describe_images, Owners=["self"],
                     Filters=[{"Name": "name", "Values": [name]}])["Images"]
    found = [i for i in found if key is None or aws.tag_dict(i.get("Tags")).get(TAG_KEY) != key]
    if found:
        raise BuildError(f"an AMI named {name!r} exists already ({found[0]['ImageId']}): "
                         "choose an --ami-name with {stamp} or {build_id}, or pass "
                         "--force-deregister to replace it")
