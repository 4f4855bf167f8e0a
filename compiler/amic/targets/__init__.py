"""Targets by name, imported lazily so ``amic`` starts fast.

``--target`` takes ``local``, ``ec2`` or ``ssh://user@host[:port]``. Each
entry maps a scheme to ``module:Class``; the class is called with the text
after the scheme (``""`` for bare names) as its only positional argument.

The default target is chosen by :func:`default_target_spec` (``$AMIC_TARGET``,
else ``local``); the ec2 target's owner may refine that rule.
"""

from __future__ import annotations

import importlib
import os

REGISTRY: dict[str, str] = {
    "local": "amic.targets.local:LocalTarget",
    "ssh": "amic.targets.ssh:SshTarget",
    "ec2": "amic.targets.ec2:Ec2Target",
}


def default_target_spec() -> str:
    return os.environ.get("AMIC_TARGET") or "local"


def split_spec(spec: str) -> tuple[str, str]:
    """``ssh://u@h:22`` -> (``ssh``, ``u@h:22``); ``local`` -> (``local``, ``""``)."""
    if "://" in spec:
        scheme, _, rest = spec.partition("://")
        return scheme, rest
    return spec, ""


def get_target(spec: str | None = None, args=None):
    """Instantiate the target named by ``spec`` (``--target`` text); UsageError if unknown.

    With parsed command-line ``args``, a target class that has a ``from_args(args)``
    classmethod (ec2: region, subnet, ...) is made with it; otherwise the class is
    called with the text after ``scheme://`` (nothing for bare names).
    """
    from amic.errors import UsageError

    spec = spec or default_target_spec()
    scheme, rest = split_spec(spec)
    entry = REGISTRY.get(scheme)
    if entry is None:
        raise UsageError(f"unknown target {spec!r}; use one of: local, ec2, ssh://user@host[:port]")
    module_name, _, cls_name = entry.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(f"target {scheme!r} is not available: {exc}") from None
    cls = getattr(module, cls_name)
    if args is not None and not rest and hasattr(cls, "from_args"):
        return cls.from_args(args)
    return cls(rest) if rest else cls()
