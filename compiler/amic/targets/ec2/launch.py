"""``amic launch``: start an instance from a built AMI, watch it boot, show ``status``, tear it down.

This is the seed's "test service" workflow: bring an AMI up with extra
services requested (the instance tag ``amic:services``, which the boot hook
reads through IMDS), check over SSH that the boot hook ran them, and only
then hand the AMI to an Auto Scaling group.
"""

from __future__ import annotations

import json
import secrets
import sys
import time

from amic.contract import RUNNER
from amic.errors import BuildError, UsageError
from amic.targets.base import Image, terminal_line



def resolve_image(target, ref: str) -> Image:
    if ref.startswith("ami-"):
        image = target.image_by_id(ref)
        if image is None:
            raise UsageError(f"no image {ref} in {target.region}")
        return image
    image = target.find_image(ref)
    if image is None:
        raise UsageError(f"no AMI recorded under key {ref!r} in {target.region} "
                         "(amic ami ls lists them)")
    return image


def wait_for_boot(machine, timeout: float, *, poll: float = 3.0) -> dict:
    """Poll ``amic status --json`` until the boot hook has recorded a result."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        lines: list[str] = []
        machine.run(f"{RUNNER} status --json 2>/dev/null", on_output=lines.append)
        last = "\n".join(lines).strip()
        try:
            status = json.loads(last) if last else {}
        except ValueError:
            status = {}
        if status.get("last_boot_result"):
            return status
        if time.monotonic() >= deadline:
            raise BuildError(f"the boot hook reported nothing after {timeout:.0f}s "
                             f"(last status: {last[:200] or 'none'}); see journalctl -u amic "
                             "and /var/log/amic on the instance")
        time.sleep(poll)


def failures(status: dict) -> list[str]:
    """Enabled services that are not healthy in ``amic status --json``, each with why
    (what ``status`` counts as failed: init not current, or the last update failed)."""
    out = []
    for svc in status.get("services", []):
        if not svc.get("enabled"):
            continue
        init, update = svc.get("init") or {}, svc.get("update") or {}
        if init.get("state") != "current":
            why = f"init {init.get('state') or 'missing'}"
            if init.get("failed_exit"):
                why += f", exit {init['failed_exit']}"
            if init.get("failed_where"):
                why += f" at {init['failed_where']}"
        elif update.get("result") == "failed":
            why = f"update failed, exit {update.get('exit') or '?'}"
            if update.get("detail"):
                why += f" ({update['detail']})"
        else:
            continue
        out.append(f"{svc.get('name')}: {why}")
    return out


def launch_and_check(target, image_ref: str, *, services: list[str], keep: bool = False,
                     boot_timeout: float = 900, command: str | None = None, out=None) -> int:
    out = out or sys.stdout
    image = resolve_image(target, image_ref)
    build_id = f"launch-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    tags = {"amic:services": " ".join(services)} if services else {}
    with target.launch(image, build_id=build_id, role="launch", instance_tags=tags) as machine:
        machine.keep = keep
        target.log(f"waiting for the boot hook on {machine.instance_id}"
                   + (f" (requested: {', '.join(services)})" if services else ""))
        status = wait_for_boot(machine, boot_timeout, poll=max(target.opts.poll_interval, 0.2))
        target.log(f"boot: {status.get('last_boot_result')}")

        def show(line: str) -> None:    # not a build's router: shown as a terminal would
            print(terminal_line(line), file=out)

        rc = machine.run(f"{RUNNER} status", on_output=show)
        for problem in failures(status):
            target.log(f"service failed at boot: {problem}")
        missing = [s for s in services
                   if not any(x.get("name") == s and x.get("enabled") for x in status.get("services", []))]
        if missing:
            target.log(f"requested services not enabled at boot: {', '.join(missing)}")
            rc = rc or 1
        if command:
            crc = machine.run(command, on_output=show)
            rc = rc or crc
    return rc
