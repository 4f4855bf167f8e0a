"""Which host key a fresh instance may present: the fingerprints its console printed.

cloud-init prints the instance's host key fingerprints between BEGIN/END
markers on the serial console, which only the account's credentials can read;
the build accepts no other key (or the user's list, or, when asked, the first
key it sees).
"""

from __future__ import annotations

import re
import time

import attrs

from amic.errors import BuildError
from amic.targets.ec2 import session as aws


@attrs.frozen
class HostKeyFingerprint:
    bits: int
    fingerprint: str
    """``SHA256:<base64 without padding>`` or ``MD5:aa:bb:…``."""
    kind: str
    """``ED25519``, ``ECDSA``, ``RSA``, ``DSA``."""


_FP_LINE = re.compile(r"(?P<bits>\d+)\s+(?P<fp>SHA256:[A-Za-z0-9+/]+=*|MD5:(?:[0-9a-f]{2}:){15}[0-9a-f]{2}"
                      r"|(?:[0-9a-f]{2}:){15}[0-9a-f]{2})\s+.*?\((?P<kind>[A-Z0-9-]+)\)\s*$")


def parse_console_fingerprints(text: str) -> list[HostKeyFingerprint]:
    """Host key fingerprints from cloud-init's block in the console output.

    Lines may carry prefixes (``ec2: ``, ``[  12.3] cloud-init[42]: ``); only
    lines between ``-----BEGIN SSH HOST KEY FINGERPRINTS-----`` and the END
    marker count, so a fingerprint printed elsewhere cannot be slipped in.
    """
    found: list[HostKeyFingerprint] = []
    inside = False
    for line in text.splitlines():
        if "-----BEGIN SSH HOST KEY FINGERPRINTS-----" in line:
            inside = True
            continue
        if "-----END SSH HOST KEY FINGERPRINTS-----" in line:
            inside = False
            continue
        if inside:
            m = _FP_LINE.search(line)
            if m:
                fp = m["fp"]
                if not fp.startswith(("SHA256:", "MD5:")):
                    fp = "MD5:" + fp
                found.append(HostKeyFingerprint(int(m["bits"]), fp.rstrip("="), m["kind"]))
    return found



def console_fingerprints(ec2, instance_id: str, *, timeout: float,
                         poll_interval: float) -> list[HostKeyFingerprint]:
    """Poll the console output of ``instance_id`` until cloud-init's fingerprints appear."""
    import botocore.exceptions

    deadline = time.monotonic() + timeout
    delay = max(poll_interval, 0.1)
    latest = True
    while True:
        try:
            kwargs = {"InstanceId": instance_id}
            if latest:
                kwargs["Latest"] = True
            out = ec2.get_console_output(**kwargs).get("Output") or ""
        except botocore.exceptions.ClientError as exc:
            if latest and aws.error_code(exc) in ("UnsupportedOperation", "InvalidParameter",
                                                  "InvalidParameterCombination"):
                latest = False
                continue
            raise aws.explain(exc, "reading the console output") from None
        fps = parse_console_fingerprints(out)
        if fps:
            return fps
        if time.monotonic() >= deadline:
            raise BuildError(
                f"no SSH host key fingerprints on the console of {instance_id} after "
                f"{timeout:.0f}s, so its host key cannot be verified. "
                "Images without cloud-init do not print them: pass "
                "--ssh-host-key-fingerprint SHA256:… or --ssh-trust-on-first-use")
        time.sleep(delay)
