"""Names, descriptions and tags of new AMIs (``--image-name`` template fields, EC2's name rules)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Mapping

import attrs

from amic.contract import KIND_FINAL, KIND_LAYER, TAG_AMIFILE, TAG_BUILD, TAG_KEY, TAG_KIND, TAG_SERVICE
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


def name_fields(tags: Mapping[str, str], key: str, build_id: str, when: dt.datetime) -> dict:
    amifile = tags.get(TAG_AMIFILE) or "amic"
    stem = re.sub(r"(?i)^amifile[._-]?|[._-]?amifile$", "", amifile) or "amic"
    return NameFields(amifile=stem, key=key[:12], build_id=build_id,
                      timestamp=when.strftime("%Y%m%d-%H%M%S"), date=when.strftime("%Y-%m-%d"),
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


def new_image(opts: Ec2Options, *, key: str, final: bool, tags: Mapping[str, str], build_id: str,
              user: str, log: Log) -> NewImage:
    """Name, description and tags of the image of a layer (``final``: of the build)."""
    fields = name_fields(tags, key, build_id, aws.now())
    if final:
        name = ami_name(opts.image_name.format_map(fields))
        description = opts.image_description.format_map(fields)[:255]
    else:
        svc = tags.get(TAG_SERVICE, "layer")
        name = ami_name(f"amic-layer-{svc}-{key[:12]}-{fields['timestamp']}")
        description = f"amic cache layer {svc} (key {key[:12]}) from {fields['amifile']}"
    all_tags = {**aws.resource_tags(build_id, ttl=None, role="image"), "Name": name,
                TAG_SSH_USER: user, **tags, TAG_KEY: key,
                TAG_KIND: tags.get(TAG_KIND, KIND_FINAL if final else KIND_LAYER)}
    if final:
        all_tags.update(opts.image_tags)
    all_tags, dropped = aws.fit_tags(all_tags, keep_prefixes=(
        TAG_KEY, TAG_KIND, aws.TAG_TOOL, TAG_BUILD, TAG_SSH_USER, TAG_AMIFILE, "Name"))
    if dropped:
        log(f"warning: EC2 allows {aws.MAX_TAGS} tags per image; left out: " + ", ".join(dropped))
    return NewImage(name, description, all_tags)
