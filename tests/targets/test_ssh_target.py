"""``--target ssh://``: provision a real sshd's throwaway root in place, twice.

The host is ``tests/harness/sshd.py``'s server over a fresh overlay of the Debian base;
the whole chain runs for real (compiler, engine, runtime on the "host").
"""

from __future__ import annotations

import io
import os

import pytest
from amic.targets.ssh.hostkeys import AcceptAnyHostKey, TrustOnFirstUse, fingerprint
from amic.engine.build import BuildOptions, build
from amic.errors import UsageError
from amic.engine.progress import Reporter
from amic.targets import get_target
from amic.targets.ssh.flags import SSH_OPTIONS
from amic.targets.ssh.options import SshOptions, options_from_values
from amic.targets.ssh.target import SshTarget


AMIFILE = """\
FROM debian:12
ARG TOKEN
ENV GREETING=hello

SERVICE base
    INIT echo "base init" >> /var/log/base-init.log

SERVICE web
    REQUIRES base
    COPY site/ /srv/site
    INIT <<~EOF
        test "${TOKEN#sek}" = rit
        echo "web init $GREETING" >> /var/log/web-init.log
    EOF
    UPDATE echo "web update" >> /var/log/web-update.log
"""


@pytest.fixture
def project(tmp_path):
    d = tmp_path / "project"
    (d / "site").mkdir(parents=True)
    (d / "site" / "index.html").write_text("<h1>hi</h1>\n")
    (d / "Amifile").write_text(AMIFILE)
    return d


def test_target_spec_and_options():
    t = SshTarget("ssh://deploy@vm.example:2222", accept_new=True, jump="ops@bastion")
    assert (t.endpoint.user, t.endpoint.host, t.endpoint.port) == ("deploy", "vm.example", 2222)
    assert isinstance(t.policy, TrustOnFirstUse)
    assert t.describe_host() == "ssh -p 2222 -J ops@bastion deploy@vm.example"
    assert not t.keeps_images
    assert t.resolve_base("debian:12").id == "ssh://deploy@vm.example:2222"
    with pytest.raises(UsageError, match="needs a host"):
        SshTarget("")
    with pytest.raises(UsageError, match="no such file"):
        SshTarget("h", key_file="/nonexistent/key")


def test_get_target_passes_the_cli_options():
    class Args:
        ssh_key = None
        ssh_known_hosts = "/tmp/kh"
        ssh_accept_new = False
        insecure_accept_any_host_key = True
        ssh_jump = "b:2200"

    t = get_target("ssh://root@h:2222", Args())
    assert isinstance(t, SshTarget)
    assert isinstance(t.policy, AcceptAnyHostKey)
    assert str(t.jump) == f"{t.jump.endpoint.user}@b:2200"


def test_options_from_values_take_the_ec2_jump_host_when_no_ssh_jump():
    assert options_from_values({}) == SshOptions()
    opts = options_from_values({"ssh_accept_new": True, "jump_host": "ec2b", "jump_key": "k"})
    assert (opts.accept_new, opts.jump, opts.jump_key) == (True, "ec2b", "k")
    assert options_from_values({"ssh_jump": "b", "jump_host": "ec2b"}).jump == "b"
    assert options_from_values({"ssh_jump": "", "jump_host": "ec2b"}).jump == "ec2b"


def test_build_flags_come_from_the_option_table():
    import argparse

    from amic.cli.ssh import add_ssh_build_options

    parser = argparse.ArgumentParser()
    add_ssh_build_options(parser)
    shown = parser.format_help()
    assert all(flag in shown for row in SSH_OPTIONS for flag in row.flags)
    args = parser.parse_args(["--ssh-key", "/k", "--ssh-jump", "b"])
    assert options_from_values(vars(args)) == SshOptions(key_file="/k", jump="b")
    with pytest.raises(SystemExit):
        parser.parse_args(["--ssh-accept-new", "--insecure-accept-any-host-key"])


@pytest.mark.slow
@pytest.mark.root
def test_provision_twice_second_run_skips_every_init(project, sshd_root, ssh_client_key, tmp_path):
    known = tmp_path / "known_hosts"
    target = SshTarget(f"root@127.0.0.1:{sshd_root.port}", key_file=str(ssh_client_key[1]),
                       known_hosts=str(known), accept_new=True,
                       connect_options={"allow_agent": False})
    options = BuildOptions(amifile=str(project / "Amifile"), build_args={"TOKEN": "sekrit"})

    log1 = io.StringIO()
    result = build(target, options, Reporter(log1, mode="plain"))
    assert result.image_id == f"ssh://root@127.0.0.1:{sshd_root.port}"
    assert [r.status for r in result.layers] == ["RUN", "RUN"]
    assert sshd_root.path("/var/log/base-init.log").read_text() == "base init\n"
    assert sshd_root.path("/var/log/web-init.log").read_text() == "web init hello\n"
    assert sshd_root.path("/var/log/web-update.log").read_text() == "web update\n"
    assert sshd_root.path("/srv/site/index.html").read_text() == "<h1>hi</h1>\n"
    assert known.read_text() == sshd_root.known_hosts_line + "\n"   # recorded on first use
    assert not os.path.exists("/srv/site/index.html")                 # never the test machine's /

    log2 = io.StringIO()
    again = build(target, options, Reporter(log2, mode="plain"))
    assert [(r.status, r.reason) for r in again.layers] == \
        [("CACHED", "already initialised on the host")] * 2
    # the runtime skipped both inits (same hashes); UPDATE ran again, as at boot
    assert sshd_root.path("/var/log/base-init.log").read_text() == "base init\n"
    assert sshd_root.path("/var/log/web-init.log").read_text() == "web init hello\n"
    assert sshd_root.path("/var/log/web-update.log").read_text() == "web update\nweb update\n"
    out = log2.getvalue()
    assert "skipped" in out, out
    # the secret never reached the host's disk
    for dirpath, _, files in os.walk(sshd_root.upper):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as fh:
                    assert b"sekrit" not in fh.read(), path


@pytest.mark.slow
@pytest.mark.root
def test_cli_build_on_an_ssh_host(project, sshd_root, ssh_client_key, tmp_path, amic_cli):
    known = tmp_path / "known_hosts"
    known.write_text(sshd_root.known_hosts_line + "\n")
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env["TOKEN"] = "sekrit"
    spec = f"ssh://root@127.0.0.1:{sshd_root.port}"
    proc = amic_cli("build", "--target", spec, "--ssh-key", str(ssh_client_key[1]),
                    "--ssh-known-hosts", str(known), "--progress", "plain", cwd=project, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == spec
    assert sshd_root.path("/var/log/web-init.log").read_text() == "web init hello\n"
    # a host that is not in known_hosts is refused, with its fingerprint
    known.write_text("")
    proc = amic_cli("build", "--target", spec, "--ssh-key", str(ssh_client_key[1]),
                    "--ssh-known-hosts", str(known), cwd=project, env=env)
    assert proc.returncode == 1
    assert fingerprint(sshd_root.host_public) in proc.stderr
    assert "--ssh-accept-new" in proc.stderr


OTHER_AMIFILE = """\
FROM debian:12
SERVICE other
    INIT echo "other init" >> /var/log/other-init.log
    UPDATE echo "other update" >> /var/log/other-update.log
"""


@pytest.mark.slow
@pytest.mark.root
def test_second_amifile_on_a_host_refused_unless_forced(project, sshd_root, ssh_client_key,
                                                        tmp_path, amic_cli):
    """Issue 18 item 12: another project's Amifile built onto a host provisioned by the first
    replaced its stage2 silently, and the first one's UPDATEs stopped running at boot."""
    known = tmp_path / "known_hosts"
    known.write_text(sshd_root.known_hosts_line + "\n")
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    env["TOKEN"] = "sekrit"
    spec = f"ssh://root@127.0.0.1:{sshd_root.port}"
    flags = ["--target", spec, "--ssh-key", str(ssh_client_key[1]), "--ssh-known-hosts",
             str(known), "--progress", "plain"]
    assert amic_cli("build", *flags, cwd=project, env=env).returncode == 0
    manifest = sshd_root.path("/var/lib/amic/stage2/manifest")
    first = manifest.read_text()
    assert "AMIC_SERVICES='base web'" in first

    other = tmp_path / "other"
    other.mkdir()
    (other / "Amifile").write_text(OTHER_AMIFILE)
    proc = amic_cli("build", *flags, cwd=other, env=env)
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr
    assert "amic: build failed: installing the stage2 on the machine failed" in err, err
    assert "refusing to replace the stage2 installed on this host" in err
    assert "it has initialised services that this stage2 (Amifile) lacks: base web." in err
    assert "--ssh-replace-stage2" in err and "Traceback" not in err
    # nothing changed on the host: the first stage2 and its UPDATEs stay
    assert manifest.read_text() == first
    assert not sshd_root.path("/var/log/other-init.log").exists()
    assert sshd_root.path("/var/log/web-update.log").read_text() == "web update\n"

    # the same project again (a service changed, none lost) is no conflict
    (project / "Amifile").write_text(AMIFILE.replace('"web update"', '"web update 2"'))
    assert amic_cli("build", *flags, cwd=project, env=env).returncode == 0, proc.stderr
    assert sshd_root.path("/var/log/web-update.log").read_text() == "web update\nweb update 2\n"

    # forced: replaced, and the build says whose UPDATE stops
    proc = amic_cli("build", *flags, "--ssh-replace-stage2", cwd=other, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "warning: replacing the stage2" in proc.stderr
    assert "no longer runs at boot: base web" in proc.stderr
    assert "AMIC_SERVICES='other'" in manifest.read_text()
    assert sshd_root.path("/var/log/other-update.log").read_text() == "other update\n"
    assert sshd_root.path("/var/lib/amic/init/web").exists()      # records are kept
