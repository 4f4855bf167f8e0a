"""The SSH layer (amic.targets.ssh) against a real sshd whose sessions land in a throwaway root.

Units (parsing, quoting, the ssh command shown to humans) run anywhere; the
rest start ``/usr/sbin/sshd`` through ``tests/harness/sshd.py`` and need root.
"""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path

import pytest
from amic.targets.ssh.conn import connect, wait_for_ssh
from amic.targets.ssh.endpoint import Endpoint, parse_jump, ssh_command
from amic.targets.ssh.errors import (AuthFailed, HostKeyMismatch, SshError, SudoError,
                                     UnknownHostKey, Unreachable)
from amic.targets.ssh.hostkeys import (AcceptAnyHostKey, ExpectedHostKeys, KnownHosts,
                                       TrustOnFirstUse, fingerprint, fingerprints,
                                       normalize_fingerprint, policy_from_options, public_key_line)
from amic.targets.ssh.session import SshConnection, env_script
from amic.errors import BuildError, UsageError

pytest.register_assert_rewrite("tests.harness.sshd")

from tests.harness.sshd import SshdRoot, free_port, new_key

# -- units ---------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "host", "port", "user"), [
    ("ssh://bob@example.com:2222", "example.com", 2222, "bob"),
    ("bob@example.com", "example.com", 22, "bob"),
    ("root@10.0.0.5:22/", "10.0.0.5", 22, "root"),
    ("alice@[2001:db8::1]:2200", "2001:db8::1", 2200, "alice"),
    ("carol@2001:db8::1", "2001:db8::1", 22, "carol"),
])
def test_endpoint_parse(text, host, port, user):
    ep = Endpoint.parse(text)
    assert (ep.host, ep.port, ep.user) == (host, port, user)


def test_endpoint_defaults_to_local_user_and_names_like_known_hosts():
    ep = Endpoint.parse("h:2222", default_user=None)
    assert ep.user  # the local user name, as OpenSSH does
    assert ep.known_hosts_name == "[h]:2222"
    assert Endpoint("h", 22, "u").known_hosts_name == "h"


@pytest.mark.parametrize("bad", ["", "@host", "u@host:0", "u@host:99999", "u@host:x", "u@[::1"])
def test_endpoint_parse_errors(bad):
    with pytest.raises(UsageError, match="expected|port"):
        Endpoint.parse(bad)


def test_policy_options_exclude_each_other():
    with pytest.raises(UsageError, match="exclude"):
        policy_from_options(accept_new=True, insecure=True)
    assert isinstance(policy_from_options(insecure=True), AcceptAnyHostKey)
    assert isinstance(policy_from_options(accept_new=True), TrustOnFirstUse)
    assert type(policy_from_options()) is KnownHosts


def test_ssh_command_for_humans():
    jump = parse_jump("ops@bastion:2200")
    cmd = ssh_command(Endpoint("10.0.0.5", 2222, "admin"), key_filename="/k/id",
                              jump=jump, policy=KnownHosts("/tmp/kh"))
    assert cmd == ("ssh -i /k/id -p 2222 -J ops@bastion:2200 -o UserKnownHostsFile=/tmp/kh "
                   "admin@10.0.0.5")


def test_env_travels_on_stdin_not_on_the_command_line():
    conn = object.__new__(SshConnection)
    conn.sudo = True
    line = conn.remote_command("echo $X")
    assert line.startswith("sudo -n /bin/sh -c ")
    assert "secret" not in line
    assert env_script({"X": "it's secret"}) == "export X='it'\"'\"'s secret'\n"
    with pytest.raises(BuildError, match="not a valid shell name"):
        env_script({"A B": "x"})


def test_expected_host_keys_accept_fingerprints_lines_and_keys():
    key = new_key()
    pub = public_key_line(key)
    for item in (key, pub, fingerprint(key), min(fingerprints(key))):
        ExpectedHostKeys([item]).check("h", key)
    with pytest.raises(HostKeyMismatch, match=re.escape(fingerprint(key))):
        ExpectedHostKeys([new_key()]).check("h", key)


@pytest.mark.parametrize("text, expected", [
    ("SHA256:AbC+/9=", "SHA256:AbC+/9"),
    (" sha256:AbC ", "SHA256:AbC"),                 # prefix in any case, base64 case kept
    ("AbC+/9=", "SHA256:AbC+/9"),                    # bare base64: SHA256
    ("MD5:6C:1B:0E:2A:33:44:55:66:77:88:99:AA:BB:CC:DD:EE",
     "MD5:6c:1b:0e:2a:33:44:55:66:77:88:99:aa:bb:cc:dd:ee"),
    ("6C:1B:0E:2A:33:44:55:66:77:88:99:AA:BB:CC:DD:EE",
     "MD5:6c:1b:0e:2a:33:44:55:66:77:88:99:aa:bb:cc:dd:ee"),   # bare hex, any case: MD5
])
def test_normalize_fingerprint(text, expected):
    assert normalize_fingerprint(text) == expected


def test_normalized_fingerprints_match_the_key_however_written():
    key = new_key()
    sha, md5 = sorted(fingerprints(key), key=lambda f: not f.startswith("SHA256:"))
    for written in (sha + "=", sha.removeprefix("SHA256:"), md5.upper(),
                    md5.removeprefix("MD5:").upper()):
        assert normalize_fingerprint(written) in fingerprints(key)
        ExpectedHostKeys([written]).check("h", key)


# -- against a real sshd -----------------------------------------------------------------



def _connect(server: SshdRoot, key, **kw) -> SshConnection:
    kw.setdefault("host_key_policy", ExpectedHostKeys([server.host_public]))
    return connect("127.0.0.1", server.port, "root", pkey=key, allow_agent=False,
                           look_for_keys=False, **kw)


@pytest.fixture
def conn(sshd_root, ssh_client_key):
    with _connect(sshd_root, ssh_client_key[0]) as c:
        yield c


@pytest.mark.slow
@pytest.mark.root
def test_run_streams_merged_output_and_returns_the_exit_status(conn, sshd_root):
    seen: list[tuple[float, str]] = []
    t0 = time.monotonic()
    rc = conn.run("echo out; echo err >&2; sleep 1.5; printf 'no newline'; exit 7",
                  on_output=lambda line: seen.append((time.monotonic() - t0, line)))
    assert rc == 7
    assert [line for _, line in seen] == ["out", "err", "no newline"]
    # Streamed: the first line arrived before the 1.5 s sleep, not with the last line after it
    # (a difference of two observed events, whatever the machine's speed).
    assert seen[-1][0] - seen[0][0] >= 1.2, f"output is not streamed: {seen}"
    assert conn.run("true") == 0
    # killed by a signal: 255 from sshd's exit-signal (as ssh reports it), or 128+9 from a
    # shell in between (the test sshd's forced command)
    assert conn.run("kill -9 $$") in (255, 137)
    # it ran inside the throwaway root, as root, from /root
    out: list[str] = []
    assert conn.run("id -u; pwd; cat /etc/debian_version", on_output=out.append) == 0
    assert out[:2] == ["0", "/root"]


@pytest.mark.slow
@pytest.mark.root
def test_run_timeout(conn):
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        conn.run("sleep 30", timeout=1)
    assert time.monotonic() - t0 < 10
    assert conn.run("true") == 0   # the connection is still usable


@pytest.mark.slow
@pytest.mark.root
def test_env_secrets_reach_the_command_but_no_command_line_or_disk(conn, sshd_root):
    secret = "s3cr3t-" + os.urandom(6).hex()
    env = {"DEPLOY_KEY": secret, "QUOTED": "a 'b' \"c\" $d `e`\nline2"}
    result: dict = {}

    def long_running():
        out: list[str] = []
        result["rc"] = conn.run('test "$DEPLOY_KEY" = ' + secret[:7] + '"${DEPLOY_KEY#s3cr3t-}"'
                                ' && printf "%s\\n" "$QUOTED" && touch /tmp/started && sleep 3',
                                env=env, on_output=out.append)
        result["out"] = out

    thread = threading.Thread(target=long_running)
    thread.start()
    deadline = time.monotonic() + 20
    while not sshd_root.path("/tmp/started").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sshd_root.path("/tmp/started").exists()
    # every process inside the root, and every process of the test machine
    inside = sshd_root.exec("for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done")
    assert "sleep 3" in inside
    assert secret not in inside
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        assert secret.encode() not in cmdline, f"secret on the command line of pid {pid}"
    thread.join(30)
    assert result["rc"] == 0, result
    assert result["out"] == ["a 'b' \"c\" $d `e`", "line2"]
    # nothing on disk: the root's upper layer, the server's directory and its log
    for top in (sshd_root.upper, sshd_root.dir):
        for dirpath, _, files in os.walk(top):
            for name in files:
                p = Path(dirpath, name)
                if p.is_file() and not p.is_symlink():
                    assert secret.encode() not in p.read_bytes(), f"secret written to {p}"


@pytest.mark.slow
@pytest.mark.root
def test_put_uploads_into_the_root_atomically_with_its_mode(conn, sshd_root, tmp_path):
    src = tmp_path / "payload"
    src.write_bytes(os.urandom(300_000))
    conn.put(src, "/root/payload.bin", mode=0o640)
    landed = sshd_root.path("/root/payload.bin")
    assert landed.read_bytes() == src.read_bytes()
    assert landed.stat().st_mode & 0o7777 == 0o640
    assert not Path("/root/payload.bin").exists(), "the upload reached the test machine's /"
    src.write_text("second version\n")
    conn.put(src, "/root/payload.bin", mode=0o600)
    assert landed.read_text() == "second version\n"
    assert sorted(p.name for p in landed.parent.iterdir()) == ["payload.bin"]  # no temp files
    with pytest.raises(SshError, match="no-such-dir"):
        conn.put(src, "/no-such-dir/x")


@pytest.mark.slow
@pytest.mark.root
def test_unknown_host_key_is_refused_with_its_fingerprint(sshd_root, ssh_client_key, tmp_path):
    known = tmp_path / "known_hosts"
    with pytest.raises(UnknownHostKey) as info:
        _connect(sshd_root, ssh_client_key[0],
                 host_key_policy=KnownHosts(known, system=None))
    msg = str(info.value)
    assert fingerprint(sshd_root.host_public) in msg
    assert "--ssh-accept-new" in msg and f"ssh-keyscan -p {sshd_root.port} 127.0.0.1" in msg
    assert not known.exists()
    assert "Accepted publickey" not in sshd_root.log   # refused before authenticating


@pytest.mark.slow
@pytest.mark.root
def test_trust_on_first_use_records_then_strict_accepts(sshd_root, ssh_client_key, tmp_path):
    known = tmp_path / "ssh" / "known_hosts"
    with _connect(sshd_root, ssh_client_key[0],
                  host_key_policy=TrustOnFirstUse(known)) as c:
        assert c.host_key == sshd_root.host_public
    assert known.read_text() == sshd_root.known_hosts_line + "\n"
    assert known.stat().st_mode & 0o777 == 0o600
    with _connect(sshd_root, ssh_client_key[0],
                  host_key_policy=KnownHosts(known, system=None)) as c:
        assert c.run("true") == 0
    with _connect(sshd_root, ssh_client_key[0],   # a second TOFU does not record twice
                  host_key_policy=TrustOnFirstUse(known)):
        pass
    assert known.read_text().count("\n") == 1


@pytest.mark.slow
@pytest.mark.root
def test_changed_host_key_is_refused(sshd_root, ssh_client_key, tmp_path):
    known = tmp_path / "known_hosts"
    other = new_key()
    known.write_text(f"{sshd_root.known_hosts_name} {public_key_line(other)}\n")
    for policy in (KnownHosts(known, system=None), TrustOnFirstUse(known)):
        with pytest.raises(HostKeyMismatch) as info:
            _connect(sshd_root, ssh_client_key[0], host_key_policy=policy)
        msg = str(info.value)
        assert "MISMATCH" in msg and fingerprint(sshd_root.host_public) in msg
        assert fingerprint(other) in msg and "ssh-keygen -R" in msg
    assert known.read_text().count("\n") == 1   # TOFU did not add the new key
    with pytest.raises(HostKeyMismatch, match=re.escape(fingerprint(other))):
        _connect(sshd_root, ssh_client_key[0], host_key_policy=ExpectedHostKeys(
            [fingerprint(other)], source="the console"))
    assert "Accepted publickey" not in sshd_root.log


@pytest.mark.slow
@pytest.mark.root
def test_auth_failure_fails_fast_without_retrying(sshd_root):
    t0 = time.monotonic()
    with pytest.raises(AuthFailed, match="authentication failed"):
        wait_for_ssh("127.0.0.1", sshd_root.port, "root", pkey=new_key(), timeout=60,
                             allow_agent=False, look_for_keys=False,
                             host_key_policy=ExpectedHostKeys([sshd_root.host_public]))
    assert time.monotonic() - t0 < 10


@pytest.mark.slow
@pytest.mark.root
def test_wait_for_ssh_retries_until_the_port_opens(sshd_factory, ssh_client_key):
    port = free_port()
    server = sshd_factory("late", port=port, start=False)
    timer = threading.Timer(2.0, server.start)
    timer.start()
    notes: list[str] = []
    t0 = time.monotonic()
    try:
        conn = wait_for_ssh("127.0.0.1", port, "root", pkey=ssh_client_key[0],
                                    timeout=60, initial_delay=0.2, log=notes.append,
                                    allow_agent=False, look_for_keys=False,
                                    host_key_policy=AcceptAnyHostKey())
    finally:
        timer.join()
    with conn:
        assert time.monotonic() - t0 >= 1.5
        assert conn.run("true") == 0
    assert notes and "waiting for SSH" in notes[0]


@pytest.mark.slow
@pytest.mark.root
def test_wait_for_ssh_gives_up_after_the_timeout():
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(Unreachable, match=r"did not answer SSH within 2s"):
        wait_for_ssh("127.0.0.1", port, "root", pkey=new_key(), timeout=2,
                             initial_delay=0.2, allow_agent=False, look_for_keys=False)
    assert time.monotonic() - t0 < 6


@pytest.mark.slow
@pytest.mark.root
def test_jump_host(sshd_factory, sshd_root, ssh_client_key, tmp_path):
    bastion = sshd_factory("bastion")
    key, key_file = ssh_client_key
    sshd_root.exec("echo the-target > /root/marker")
    jump = parse_jump(f"root@127.0.0.1:{bastion.port}", key_filename=str(key_file),
                              host_key_policy=ExpectedHostKeys([bastion.host_public]))
    with _connect(sshd_root, key, jump=jump, key_filename=str(key_file)) as c:
        out: list[str] = []
        assert c.run("cat /root/marker", on_output=out.append) == 0
        assert out == ["the-target"]
        assert f"-J root@127.0.0.1:{bastion.port}" in c.describe()
        assert f"-i {key_file}" in c.describe()
    assert not bastion.path("/root/marker").exists()
    assert "direct-tcpip" in bastion.log or "Connection from" in bastion.log
    # the bastion's key is checked too
    bad = parse_jump(f"root@127.0.0.1:{bastion.port}", key_filename=str(key_file),
                             host_key_policy=ExpectedHostKeys([new_key()]))
    with pytest.raises(HostKeyMismatch):
        _connect(sshd_root, key, jump=bad)
    # a target the bastion cannot reach (yet) is "not up", so wait_for_ssh retries it
    with pytest.raises(Unreachable):
        connect("127.0.0.1", free_port(), "root", pkey=key, jump=jump,
                        allow_agent=False, host_key_policy=AcceptAnyHostKey())


FAKE_SUDO = """#!/bin/sh
# stands in for sudo: records how it was called, then runs the command
echo "$*" >> /var/log/fake-sudo.log
[ -e /etc/sudo-needs-password ] && { echo "sudo: a password is required" >&2; exit 1; }
[ "$1" = -n ] && shift
exec "$@"
"""


@pytest.mark.slow
@pytest.mark.root
def test_sudo_for_non_root_users(sshd_root, ssh_client_key, tmp_path):
    sshd_root.exec(f"cat > /usr/local/bin/sudo <<'EOF'\n{FAKE_SUDO}EOF\nchmod 755 /usr/local/bin/sudo")
    with _connect(sshd_root, ssh_client_key[0], sudo=True) as c:
        out: list[str] = []
        assert c.run('echo "$SECRET"', env={"SECRET": "x1"}, on_output=out.append) == 0
        assert out == ["x1"]
        src = tmp_path / "f"
        src.write_text("via sudo\n")
        c.put(src, "/etc/amic-test", mode=0o644)
    assert sshd_root.path("/etc/amic-test").read_text() == "via sudo\n"
    assert sshd_root.path("/etc/amic-test").stat().st_mode & 0o777 == 0o644
    calls = sshd_root.path("/var/log/fake-sudo.log").read_text()
    assert calls.startswith("-n true\n")          # the check at connect time
    assert "-n /bin/sh -c" in calls and "x1" not in calls
    assert not list(sshd_root.path("/tmp").glob(".amic-upload-*"))
    sshd_root.exec("touch /etc/sudo-needs-password")
    with pytest.raises(SudoError, match="NOPASSWD"):
        _connect(sshd_root, ssh_client_key[0], sudo=True)


def test_a_port_without_an_ssh_banner_is_not_up_yet():
    """TCP accepts but no SSH banner comes (sshd still starting, a proxy): retried, then given up."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    try:
        t0 = time.monotonic()
        with pytest.raises(Unreachable, match="did not answer SSH"):
            wait_for_ssh("127.0.0.1", port, "root", pkey=new_key(), timeout=3,
                                 connect_timeout=1, initial_delay=0.2, allow_agent=False,
                                 look_for_keys=False)
        assert time.monotonic() - t0 < 10
    finally:
        listener.close()
