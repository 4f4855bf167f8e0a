"""What a build takes from the user besides the Amifile: ARG values and SECRET values.

- ARG: a ``--build-arg`` that no ARG declares (globally or in any SERVICE block)
  is a warning naming it; an ARG with neither a value nor a default is an error
  unless ``--allow-missing-args``.
- SECRET: a ``--secret`` that no SECRET declares is a warning naming it. A
  secret an INIT about to run needs (every global one, and the service's own)
  that has no value is an error, raised before any machine is launched; the
  layers found in the cache need none, so rotating or leaving out a secret
  never re-runs (or fails) a cached build. A dry run needs no secret value:
  it names the secrets the real build would need (:func:`secrets_needed`).
- The environment of one layer's ``amic init``: the ARG values that service
  sees, its SECRET values, and ``AMIC_SECRET_NAMES`` (the names, so the runner
  masks those values in its log and output). It goes to ``Machine.run(env=)``,
  which keeps it off command lines and disks.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from amic.compile import plan as planmod
from amic.errors import UsageError

SECRET_NAMES_VAR = "AMIC_SECRET_NAMES"
"""Space-separated SECRET names in the environment of ``amic init`` (runtime/amic masks their
values in /var/log/amic/amic.log and its output)."""


def check(plan: planmod.Plan, build_args: Iterable[str], secrets: Iterable[str], *,
          allow_missing_args: bool, warn) -> None:
    """Warn about undeclared ``--build-arg``/``--secret`` names; fail on missing ARG values."""
    declared = {a.name for a in plan.declared_args}
    unused = sorted(set(build_args) - declared)
    if unused:
        warn(f"build args not declared with ARG (ignored): {', '.join(unused)}")
    unused = sorted(set(secrets) - set(plan.secret_names()))
    if unused:
        warn(f"secrets not declared with SECRET (ignored): {', '.join(unused)}")
    if plan.missing_args:
        names = ", ".join(dict.fromkeys(plan.missing_args))
        if not allow_missing_args:
            raise UsageError(f"ARG without a value or default: {names} (pass --build-arg "
                             "NAME=VALUE, or --build-arg NAME to read it from the environment; "
                             "--allow-missing-args builds with them empty)")
        warn(f"ARG without a value or default: {names} (built empty: --allow-missing-args)")


def secrets_needed(plan: planmod.Plan, services: Iterable[str]) -> dict[str, list[str]]:
    """The SECRET names the INITs of ``services`` read, each with the services that need it."""
    needed: dict[str, list[str]] = {}
    for service in services:
        for name in plan.secret_names(service):
            needed.setdefault(name, []).append(service)
    return needed


def require_secrets(plan: planmod.Plan, services: Iterable[str],
                    secrets: Mapping[str, str]) -> None:
    """Fail (before anything is launched) if an INIT of ``services`` needs a secret not given."""
    missing = {name: svcs for name, svcs in secrets_needed(plan, services).items()
               if name not in secrets}
    if missing:
        what = "; ".join(f"{name} (needed by {', '.join(svcs)})" for name, svcs in missing.items())
        first = next(iter(missing))
        raise UsageError(f"SECRET without a value: {what}; give it with --secret "
                         f"id={first},src=FILE, --secret id={first},env=VAR or --secret {first} "
                         "(the environment variable of that name)")


def init_env(plan: planmod.Plan, service: str, secrets: Mapping[str, str]) -> dict[str, str]:
    """The environment of ``amic init SERVICE``: its ARG values, its SECRET values and names."""
    env = plan.layer_env(service)
    names = [n for n in plan.secret_names(service) if n in secrets]
    if names:
        env.update({n: secrets[n] for n in names})
        env[SECRET_NAMES_VAR] = " ".join(names)
    return env
