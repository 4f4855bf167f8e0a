"""amic through the real CLI as the IAM user of an enforced fake EC2 (``iam.py``): what the
IAM end-to-end modules share (``tests/e2e/test_ec2_iam*.py``).

``Session.amic`` runs one command under a policy (docs/ec2.md's base policy unless told),
``Session.build`` an SSH-baked build of the session's Amifile; ``Run`` is what came back,
with the actions amic called and the refusals, and ``Run.refused`` the check that a
missing permission is a clear error.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.harness.cli import run_amic
from tests.harness.ec2 import assert_clean, iam_policy
from tests.harness.ec2.iam import IamEnforcement

DOC = iam_policy.documented()


class Run:
    def __init__(self, proc: subprocess.CompletedProcess, iam: IamEnforcement) -> None:
        self.rc, self.stdout, self.stderr = proc.returncode, proc.stdout, proc.stderr
        self.actions = iam.actions()
        self.denials = iam.denials()

    @property
    def ami(self) -> str:
        return self.stdout.strip().splitlines()[-1]

    def refused(self, action: str) -> None:
        """Exit 1, the missing action and the doc named, no traceback."""
        assert self.rc == 1, self
        assert f"the IAM policy lacks {action}: docs/ec2.md" in self.stderr, self
        assert "Traceback" not in self.stderr, self
        print(self.stderr.strip().splitlines()[-1])     # shown with -s: what a user reads

    def __repr__(self) -> str:
        return (f"<rc={self.rc} denials={self.denials}>\n{self.stdout[-2000:]}\n"
                f"{self.stderr[-4000:]}")


def no_denials(run: Run, *expected: str) -> None:
    """Exit 0, and nothing refused but the ``expected`` (optional) permissions."""
    assert run.rc == 0, run
    assert [d for d in run.denials if not any(e in d for e in expected)] == [], run


class Session:
    def __init__(self, fake, root: Path, amifile: str) -> None:
        self.fake = fake
        self.iam = IamEnforcement(fake)
        self.root = root
        self.amifile = amifile
        """The Amifile ``build`` writes: a template of ``{variant}`` and ``{base}``."""
        self.base_ami = fake.register_debian12()

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "AMIC_"))}
        return {**env, **self.iam.env, "NO_COLOR": "1",
                "XDG_CACHE_HOME": str(self.root / "xdg-cache")}

    def common(self) -> list[str]:
        return [*self.fake.ssh_args(), "--ssh-user", "root", "--poll-interval", "0.05",
                "--ssh-timeout", "60", "--console-timeout", "30"]

    def amic(self, *argv: str, policy: dict | None = None, env: dict | None = None,
             timeout: float = 600) -> Run:
        self.iam.use_policy(policy or DOC.policy())
        self.fake.proxy.reset()
        proc = run_amic(*argv, cwd=self.root, env={**self.env(), **(env or {})},
                        timeout=timeout)
        return Run(proc, self.iam)

    def write_amifile(self, text: str, name: str = "Amifile") -> None:
        amifile = self.root / name
        if not amifile.exists() or amifile.read_text() != text:   # a new mtime misses the memo
            amifile.write_text(text)

    def build(self, variant: str, *extra: str, policy: dict | None = None,
              base: str = "base") -> Run:
        self.write_amifile(self.amifile.format(variant=variant, base=base))
        run = self.amic("build", "--target", "ec2", *self.common(), "--checkpoint", "all",
                        *extra, "Amifile", policy=policy)
        assert_clean(self.fake)
        return run
