"""Checks of instructions: AM1xxx (structure) and AM2xxx (global instructions)."""

from __future__ import annotations

from amic.errors import Pos
from amic.lint.facts import SECRET_NAME_RE, Found, literal, secret_in
from amic.lint.model import Context

# --------------------------------------------------------------------------- AM1xxx


def check_empty_service(ctx: Context) -> Found:
    for svc in ctx.amifile.services:
        if not (svc.requires or svc.packages or svc.copies or svc.envs or svc.inits
                or svc.updates):
            yield svc.pos, f"service {svc.name!r} is empty: it installs, copies and runs nothing"


# --------------------------------------------------------------------------- AM2xxx


def check_from_missing(ctx: Context) -> Found:
    if ctx.amifile.base is None and not ctx.fragment:
        yield Pos(ctx.path, 1, 1), ("no FROM: the build target's default base image is used, "
                                    "which can change under you; say FROM explicitly")


def check_from_latest(ctx: Context) -> Found:
    base = ctx.amifile.base
    if base is None:
        return
    ref = base.ref.strip()
    if ref.startswith("ami-") or "=" in ref:
        return  # an AMI id is pinned; a filter is explicit about what it matches
    name, _, tag = ref.rpartition(":") if ":" in ref else (ref, "", "")
    if tag == "latest":
        yield base.pos, f"FROM {ref}: ':latest' changes under you; pin a release such as {name}:12"
    elif not tag:
        yield base.pos, f"FROM {ref} has no version; pin a release such as {ref}:12"


def check_env_label_secret(ctx: Context) -> Found:
    pairs: list[tuple[str, str, str, Pos]] = []
    for env in ctx.amifile.envs + tuple(e for s in ctx.amifile.services for e in s.envs):
        pairs.append(("ENV", env.name, env.value, env.pos))
    for label in ctx.amifile.labels:
        pairs.append(("LABEL", label.key, label.value, label.pos))
    for keyword, name, value, pos in pairs:
        what = secret_in(value) or secret_in(f"{name}={value}")
        if what is None and SECRET_NAME_RE.search(name) and literal(value):
            what = f"a literal {name.lower()}"
        if what:
            yield pos, (f"{keyword} {name} holds {what}: it is baked into the image and the "
                        "artifact; pass it as an ARG or fetch it at boot")


def check_arg_secret_default(ctx: Context) -> Found:
    af = ctx.amifile
    for arg in [*af.args, *(a for svc in af.services for a in svc.args)]:
        if arg.default and (SECRET_NAME_RE.search(arg.name) or secret_in(arg.default)):
            if literal(arg.default):
                yield arg.pos, (f"ARG {arg.name} has a secret-looking default committed to the "
                                "Amifile (and an ARG's value is in the cache keys); declare it "
                                "SECRET and pass it with amic build --secret")
