"""A fake EC2 that is real HTTP: moto in server mode, a counting proxy, and instance stand-ins.

Nothing in boto3 is patched. Clients reach the proxy through
``AWS_ENDPOINT_URL_EC2``; the proxy forwards every call to a moto server
(a subprocess on a random loopback port), counts operations, can answer
with injected errors (throttling), and watches the calls that change an
instance's life to drive a *stand-in*:

- RunInstances: a fresh upper directory for each instance over the layers
  of the AMI it was launched from (a registered base AMI: the debootstrap
  base; an AMI made by CreateImage: the layers of its instance), served by a
  real sshd on loopback whose sessions run inside that overlay root
  (``tests/sshd.py``), authorizing the public key moto stored for the key
  pair, with its own host key;
- StopInstances / StartInstances: the sshd goes away / comes back (same
  files, same host key, like a real stop/start);
- CreateImage: the instance's upper directory is frozen (moved, the
  instance being stopped) as a new layer on top of its layers; started
  again, the instance gets a fresh upper over that chain. So an instance
  launched from a layer AMI has the earlier layers' files and packages;
- TerminateInstances: the sshd stops and the root is deleted; the instance shows
  ``shutting-down`` for a second, and its security groups cannot be deleted until
  then (``ec2_terminate.py``: EC2's behaviour, which moto skips);
- GetConsoleOutput: cloud-init's ``SSH HOST KEY FINGERPRINTS`` block with the
  stand-in's real host key is added (moto prints none), then what the boot
  units wrote (``StandardOutput=journal+console``).

**Boot: the one stand-in for systemd and the instance metadata service.**
When an instance's root has amic's boot hook enabled (the units the stage2
ships in ``/var/lib/amic/stage2/boot/*.service`` that ``amic
install-boot-hook`` linked into ``/etc/systemd/system/multi-user.target.wants``),
every boot runs them as systemd would, from the unit files in the root
(``ExecStart``, ``Environment``, the ``Condition*`` lines; nothing hard-coded):
units ordered ``Before=ssh.service``/``sshd.service`` (the host key
regeneration) before the stand-in's sshd starts, the others (``amic.service``,
``After=network-online.target``) in a thread right after it is up. Their
environment adds ``AMIC_EC2=1 AMIC_IMDS_URL=http://127.0.0.1:PORT``: a tiny
IMDSv2 on loopback (``Imds``) for that instance, answering ``PUT
/latest/api/token``, ``GET /latest/meta-data/instance-id`` and ``GET
/latest/meta-data/tags/instance[/KEY]`` from moto (tags only when the instance
was launched with ``MetadataOptions.InstanceMetadataTags=enabled``, as on EC2),
404 for everything else. That environment is the only difference from a real
boot as far as amic is concerned. Host keys stay consistent: sshd serves the
root's own ``/etc/ssh/ssh_host_ed25519_key`` when the image has one after the
early units ran (an image with openssh-server); otherwise (the debootstrap
base has no sshd, so the regeneration unit's conditions skip it) the
stand-in's key, generated at first boot and kept over stop/start. The console
fingerprints are always those of the key served.

The instance's sshd is reached the way a port-forwarded setup would reach
it: a relay on one fixed loopback port (``StandIn.relay_port``) forwards to
the sshd of the most recently started instance; builds pass it as
``--ssh-host 127.0.0.1 --ssh-port PORT``.

moto's account id is set to Debian's image owner, so ``FROM debian:12``
resolves through the same owner + name filter as on real AWS.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import http.client
import http.server
import io
import os
import secrets
import shlex
import shutil
import socket
import socketserver
import stat
import subprocess
import sys
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.harness.ec2_terminate import Termination

DEBIAN_OWNER = "136693071363"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# -- moto -------------------------------------------------------------------

class MotoServer:
    """``moto_server`` as a subprocess on a random loopback port."""

    def __init__(self, account: str = DEBIAN_OWNER) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.account = account
        self.proc: subprocess.Popen | None = None

    def start(self) -> MotoServer:
        env = {**os.environ, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false", "MOTO_ACCOUNT_ID": self.account}
        self.log = open(os.devnull, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        _wait_port(self.port)
        return self

    def reset(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("POST", "/moto-api/reset")
        conn.getresponse().read()
        conn.close()

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.log.close()
            self.proc = None


# -- the proxy ----------------------------------------------------------------

def _params(body: bytes) -> dict[str, str]:
    return {k: v[0] for k, v in urllib.parse.parse_qs(body.decode(), keep_blank_values=True).items()}


def numbered(params: dict[str, str], prefix: str) -> list[str]:
    """``InstanceId.1``, ``InstanceId.2`` ... in order."""
    out = []
    i = 1
    while f"{prefix}.{i}" in params:
        out.append(params[f"{prefix}.{i}"])
        i += 1
    return out


class ApiError(Exception):
    """Raised by a ``before`` hook: the proxy answers the call with this EC2 error."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


def tag_specs(params: dict[str, str], resource_type: str) -> dict[str, str]:
    """The tags a call's ``TagSpecification.N`` gives ``resource_type``."""
    tags = {}
    n = 1
    while f"TagSpecification.{n}.ResourceType" in params:
        if params[f"TagSpecification.{n}.ResourceType"] == resource_type:
            m = 1
            while f"TagSpecification.{n}.Tag.{m}.Key" in params:
                tags[params[f"TagSpecification.{n}.Tag.{m}.Key"]] = params.get(
                    f"TagSpecification.{n}.Tag.{m}.Value", "")
                m += 1
        n += 1
    return tags


def _error_xml(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{code}</Code>'
            f"<Message>{message}</Message></Error></Errors><RequestID>injected</RequestID>"
            "</Response>").encode()


class Ec2Proxy:
    """Loopback HTTP proxy in front of moto: counts calls, injects errors, runs hooks.

    ``after[action](params, xml_text) -> xml_text`` may rewrite a response;
    ``before[action](params)`` may raise to fail the call (it runs first);
    ``forward[action](params) -> params`` changes what moto is asked (the log, the counts
    and the other hooks see the call as the client made it).
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.calls: collections.Counter[str] = collections.Counter()
        self.log: list[tuple[str, dict[str, str]]] = []
        self.agents: list[tuple[str, str]] = []
        """(action, User-Agent) of every call: who asked (boto3 or amic's own Query calls)."""
        self.before: dict[str, list] = collections.defaultdict(list)
        self.after: dict[str, list] = collections.defaultdict(list)
        self.forward: dict[str, list] = collections.defaultdict(list)
        self._faults: list[list] = []   # [action or "*", remaining, code, status]
        self._armed: list[list] = []    # [create action, describe action, times, code, pending]
        self._rewrites: list[list] = []  # [action, old, new, remaining]
        self._lock = threading.Lock()
        self.injected = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                status, headers, data = proxy._handle("POST", self.path, dict(self.headers), body)
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Ec2Proxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.log.clear()
            self.agents.clear()
            self._faults.clear()
            self._armed.clear()
            self._rewrites.clear()
            self.injected = 0

    def fail(self, action: str = "*", times: int = 1, code: str = "RequestLimitExceeded",
             status: int = 503) -> None:
        """Answer the next ``times`` calls of ``action`` (``*``: any) with an error."""
        with self._lock:
            self._faults.append([action, times, code, status])

    def not_found_after(self, create: str, describe: str, times: int, code: str) -> None:
        """Eventual consistency: after each successful ``create`` call, the next ``times``
        ``describe`` calls answer ``code`` (e.g. InvalidAMIID.NotFound), as EC2 does for a
        while after CreateImage/RegisterImage/CreateSnapshot."""
        with self._lock:
            self._armed.append([create, describe, times, code, 0])

    def rewrite(self, action: str, old: str, new: str, times: int) -> None:
        """Replace ``old`` by ``new`` in the next ``times`` answers of ``action`` that hold it
        (e.g. an instance still ``stopping`` before it is ``terminated``)."""
        with self._lock:
            self._rewrites.append([action, old, new, times])

    def count(self, *actions: str) -> int:
        return sum(self.calls[a] for a in actions)

    def boto3_calls(self) -> list[str]:
        """Actions called through boto3 (botocore's User-Agent), in order."""
        with self._lock:
            return [a for a, agent in self.agents if "Botocore/" in agent or "Boto3/" in agent]

    def calls_of(self, action: str) -> list[dict[str, str]]:
        """The parameters of every ``action`` call seen, in order."""
        with self._lock:
            return [p for a, p in self.log if a == action]

    def moto_client(self):
        """A boto3 client straight to moto (not counted, no hooks): for the hooks' own look-ups."""
        import boto3

        return boto3.client("ec2", region_name=REGION, aws_access_key_id="testing",
                            aws_secret_access_key="testing",
                            endpoint_url=f"http://127.0.0.1:{self.upstream_port}")

    def _handle(self, method, path, headers, body):
        params = _params(body) if body else {}
        action = params.get("Action", "?")
        with self._lock:
            self.calls[action] += 1
            self.log.append((action, params))
            self.agents.append((action, next((v for k, v in headers.items()
                                              if k.lower() == "user-agent"), "")))
            for fault in self._faults:
                if fault[1] > 0 and fault[0] in ("*", action):
                    fault[1] -= 1
                    self.injected += 1
                    return fault[3], [("Content-Type", "text/xml")], _error_xml(fault[2], "injected")
            for armed in self._armed:
                if armed[1] == action and armed[4] > 0:
                    armed[4] -= 1
                    self.injected += 1
                    return 400, [("Content-Type", "text/xml")], _error_xml(armed[3], "eventual")
        try:
            for hook in self.before.get(action, ()):
                hook(params)
        except ApiError as exc:
            return exc.status, [("Content-Type", "text/xml")], _error_xml(exc.code, exc.message)
        if self.forward.get(action):
            sent = dict(params)
            for hook in self.forward[action]:
                sent = hook(sent)
            body = urllib.parse.urlencode(sent).encode()   # moto checks no signature
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=120)
        fwd = {k: v for k, v in headers.items()
               if k.lower() not in ("host", "connection", "content-length")}
        fwd["Content-Length"] = str(len(body))
        conn.request(method, path, body=body, headers=fwd)
        resp = conn.getresponse()
        data = resp.read()
        out_headers = resp.getheaders()
        conn.close()
        if resp.status == 200 and self.after.get(action):
            text = data.decode()
            for hook in self.after[action]:
                text = hook(params, text) or text
            data = text.encode()
        if resp.status == 200:
            data = self._after_faults(action, data)
        return resp.status, out_headers, data

    def _after_faults(self, action: str, data: bytes) -> bytes:
        with self._lock:
            for armed in self._armed:
                if armed[0] == action:
                    armed[4] = armed[2]
            for rw in self._rewrites:
                if rw[0] == action and rw[3] > 0 and rw[1].encode() in data:
                    rw[3] -= 1
                    self.injected += 1
                    data = data.replace(rw[1].encode(), rw[2].encode())
        return data


def xml_values(text: str, tag: str) -> list[str]:
    root = ET.fromstring(text)
    return [el.text or "" for el in root.iter() if el.tag.split("}")[-1] == tag]


# -- the instance stand-in ------------------------------------------------------

class _Relay:
    """A TCP listener on one fixed port forwarding each connection to ``target()``."""

    def __init__(self, target) -> None:
        self.target = target
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            port = self.target()
            if port is None:
                client.close()   # like a port nobody listens on yet
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", port), 5)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self):
        self._stop = True
        self.sock.close()


class Imds:
    """An IMDSv2 stand-in on loopback for one instance, answering from moto.

    ``PUT /latest/api/token`` (with ``X-aws-ec2-metadata-token-ttl-seconds``)
    gives a token; ``GET`` needs it (401 otherwise). Served: ``meta-data/instance-id``,
    ``meta-data/tags/instance`` (the keys) and ``meta-data/tags/instance/KEY``,
    the tags read from moto at each request and only when the instance was
    launched with ``InstanceMetadataTags=enabled`` (404 otherwise, as on EC2).
    Everything else (user-data included: none is ever given) is 404.
    """

    def __init__(self, instance_id: str, moto_client, requests: list | None = None) -> None:
        self.instance_id = instance_id
        self.moto = moto_client
        self.tokens: set[str] = set()
        self.requests: list[tuple[str, str, int]] = [] if requests is None else requests
        """(method, path, status) of every request, in order."""
        imds = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _reply(self, status: int, body: str = "") -> None:
                data = body.encode()
                imds.requests.append((self.command, self.path, status))
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_PUT(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path != "/latest/api/token":
                    return self._reply(404)
                if not self.headers.get("X-aws-ec2-metadata-token-ttl-seconds"):
                    return self._reply(400)
                token = secrets.token_urlsafe(24)
                imds.tokens.add(token)
                return self._reply(200, token)

            def do_GET(self):
                if self.headers.get("X-aws-ec2-metadata-token") not in imds.tokens:
                    return self._reply(401)
                status, body = imds.answer(urllib.parse.unquote(self.path))
                return self._reply(status, body)

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _described(self) -> dict:
        reply = self.moto.describe_instances(InstanceIds=[self.instance_id])
        return reply["Reservations"][0]["Instances"][0]

    def answer(self, path: str) -> tuple[int, str]:
        if path == "/latest/meta-data/instance-id":
            return 200, self.instance_id
        prefix = "/latest/meta-data/tags/instance"
        if path == prefix or path.startswith(prefix + "/"):
            inst = self._described()
            if inst.get("MetadataOptions", {}).get("InstanceMetadataTags") != "enabled":
                return 404, ""
            tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
            key = path[len(prefix) + 1:]
            if not key:
                return 200, "\n".join(sorted(tags))
            return (200, tags[key]) if key in tags else (404, "")
        return 404, ""

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


SYSTEMD_DIR = "/etc/systemd/system"
WANTS = f"{SYSTEMD_DIR}/multi-user.target.wants"
STAGE2_BOOT = "/var/lib/amic/stage2/boot"


def parse_unit(text: str) -> dict[str, list[str]]:
    """A systemd unit file as ``{"Section.Key": [values...]}`` (repeated keys kept in order)."""
    out: dict[str, list[str]] = collections.defaultdict(list)
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, _, value = line.partition("=")
        out[f"{section}.{key.strip()}"].append(value.strip())
    return dict(out)


class _Unit:
    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.conf = parse_unit(text)
        self.before = " ".join(self.conf.get("Unit.Before", [])).split()
        self.result: int | None = None
        """Exit status of the last ExecStart run (None: not run, or skipped by a condition)."""

    @property
    def early(self) -> bool:
        """Ordered before sshd (the host key regeneration)."""
        return bool({"ssh.service", "sshd.service"} & set(self.before))


_CONDITIONS = {"ConditionPathExists": "test -e {p}", "ConditionFileIsExecutable": "test -f {p} && test -x {p}",
               "ConditionPathIsDirectory": "test -d {p}", "ConditionFileNotEmpty": "test -s {p}"}


class _Instance:
    def __init__(self, iid: str, image: str, lowers: list[Path], upper: Path, pubkey: str | None):
        self.id = iid
        self.image = image
        self.lowers = lowers
        self.upper = upper
        self.pubkey = pubkey
        self.sshd = None        # the running SshdRoot context
        self.port: int | None = None
        self.host_key = None     # paramiko PKey, kept over stop/start
        self.started = 0
        self.imds: Imds | None = None
        self.imds_requests: list[tuple[str, str, int]] = []
        """(method, path, status) of every request to the instance's IMDS, all boots."""
        self.units: list[_Unit] = []
        """amic's boot units enabled in the root at the last boot."""
        self.console: list[str] = []
        """What the boot units printed (journal+console), all boots."""
        self.booted = threading.Event()
        """Set when the last boot's units have all finished (at once when there are none)."""


def _snapshot_tags(params: dict[str, str]) -> dict[str, str]:
    """The tags of the ``snapshot`` TagSpecification(s) of a call."""
    tags: dict[str, str] = {}
    for key, value in params.items():
        if key.startswith("TagSpecification.") and key.endswith(".ResourceType") \
                and value == "snapshot":
            spec = key[:-len("ResourceType")]
            for n in range(1, 51):
                name = params.get(f"{spec}Tag.{n}.Key")
                if name is None:
                    break
                tags[name] = params.get(f"{spec}Tag.{n}.Value", "")
    return tags


def _without_snapshot_tags(params: dict[str, str]) -> dict[str, str]:
    """The call without its ``snapshot`` TagSpecifications, renumbered (moto raises
    NotImplementedError on them in CreateImage)."""
    specs = sorted({k.split(".")[1] for k in params if k.startswith("TagSpecification.")},
                   key=int)
    kept = [n for n in specs if params.get(f"TagSpecification.{n}.ResourceType") != "snapshot"]
    out = {k: v for k, v in params.items() if not k.startswith("TagSpecification.")}
    for new, old in enumerate(kept, 1):
        prefix = f"TagSpecification.{old}."
        out.update({f"TagSpecification.{new}.{k[len(prefix):]}": v
                    for k, v in params.items() if k.startswith(prefix)})
    return out


class StandIn:
    """Instances as overlay roots served by a real sshd (``tests/sshd.py``).

    ``images`` maps an AMI id to its layers (top first); base AMIs registered
    with ``register_base`` map to a read-only base root (a debootstrap tree).
    Without ``base_root`` (no root privileges, or lifecycle-only tests) no
    sshd is started and SSH never comes up.
    """

    def __init__(self, proxy: Ec2Proxy, workdir: Path, base_root: Path | None) -> None:
        self.proxy = proxy
        self.workdir = workdir
        self.base_root = base_root
        self.images: dict[str, list[Path]] = {}
        self.keys: dict[str, str] = {}
        self.instances: dict[str, _Instance] = {}
        self.current: str | None = None
        self.ssh_up = True
        """False: instances never answer on SSH (the relay refuses)."""
        self.wrong_fingerprint = False
        """True: the console prints a host key fingerprint that is not the instance's."""
        self.print_fingerprints = True
        self.plain: PlainSshd | None = None
        """When set, every instance is this one sshd (no roots: host key and lifecycle tests)."""
        self.keep_disks = False
        """True: a terminated instance's upper directory is kept (to search it afterwards)."""
        self.launches: list[tuple[str, str]] = []
        """(instance id, image id) of every RunInstances, in order."""
        self.image_of: dict[str, str] = {}
        """AMI id -> the instance it was made from."""
        self.terminated: list[_Instance] = []
        self.snapshot_seconds = 0.5
        """How long a new snapshot stays ``pending`` (moto answers ``completed`` at once)."""
        self.snapshots: dict[str, list[Path]] = {}
        """Snapshot id -> the disk it captured (its layers, top first)."""
        self.snapshot_of: dict[str, str] = {}
        """Snapshot id -> the instance it was taken of."""
        self.copy_seconds = 0.0
        """Time the hooks spent copying disks (CreateSnapshot, CreateImage of a running
        instance): the stand-in's own cost, which EC2 does not make the caller wait for."""
        self._ready: dict[str, float] = {}
        self._moto_snap: dict[str, str] = {}
        """moto's own snapshot id of a registered AMI -> the snapshot it was registered from."""
        self.problems: list[str] = []
        """What the stand-in could not do while booting an instance (tests expect none)."""
        self._lock = threading.RLock()
        self._n = 0
        self.relay = _Relay(self._current_port)
        self.relay_port = self.relay.port
        for action, hook in (("ImportKeyPair", self._import_key), ("RunInstances", self._run),
                             ("StopInstances", self._stop), ("StartInstances", self._start),
                             ("CreateImage", self._create_image),
                             ("TerminateInstances", self._terminate),
                             ("GetConsoleOutput", self._console),
                             ("DescribeImages", self._ebs_root),
                             ("CreateSnapshot", self._create_snapshot),
                             ("DescribeSnapshots", self._snapshot_states),
                             ("RegisterImage", self._register_image)):
            proxy.after[action].append(hook)
        proxy.forward["CreateImage"].append(_without_snapshot_tags)
        proxy.after["CreateImage"].append(self._tag_image_snapshots)
        self.termination = Termination(proxy, ApiError)
        """``shutting-down`` for a while, and no group deleted while an instance holds it."""
        proxy.before["RegisterImage"].append(self._register_needs_completed)
        proxy.before["DeleteKeyPair"].append(self._delete_key_pair_by_id)

    def _current_port(self):
        with self._lock:
            inst = self.instances.get(self.current or "")
            return inst.port if inst and self.ssh_up else None

    def register_base(self, ec2, name: str, *, arch: str = "x86_64") -> str:
        """Register a base AMI (named like the distribution's own) backed by ``base_root``."""
        ami = ec2.register_image(Name=name, Architecture=arch, RootDeviceName="/dev/xvda",
                                 VirtualizationType="hvm",
                                 BlockDeviceMappings=[{"DeviceName": "/dev/xvda",
                                                       "Ebs": {"VolumeSize": 8}}])["ImageId"]
        self.images[ami] = [self.base_root] if self.base_root else []
        return ami

    # hooks (they run in the proxy's threads) ---------------------------------

    def _import_key(self, params, text):
        material = base64.b64decode(params.get("PublicKeyMaterial", "")).decode()
        self.keys[params.get("KeyName", "")] = material.strip()

    def _stored_key(self, name: str) -> str | None:
        """The public key moto keeps for a key pair (what a real instance's cloud-init installs)."""
        if not name:
            return None
        with contextlib.suppress(Exception):
            pairs = self.proxy.moto_client().describe_key_pairs(
                KeyNames=[name], IncludePublicKey=True)["KeyPairs"]
            if pairs and pairs[0].get("PublicKey"):
                return pairs[0]["PublicKey"].strip()
        return self.keys.get(name)

    def _run(self, params, text):
        image = params.get("ImageId", "")
        pubkey = self._stored_key(params.get("KeyName", ""))
        with self._lock:
            for iid in xml_values(text, "instanceId"):
                if iid in self.instances:   # a retried RunInstances with the same client token
                    continue
                self._n += 1
                upper = self.workdir / f"instance-{self._n}-{iid}"
                upper.mkdir(parents=True)
                inst = _Instance(iid, image, list(self.images.get(image, [])), upper, pubkey)
                self.instances[iid] = inst
                self.launches.append((iid, image))
                self._boot(inst)

    def _boot(self, inst: _Instance) -> None:
        """Start the instance's sshd over overlay(its image's lowers + its upper ``root``)."""
        if self.plain is not None and inst.pubkey:
            self.plain.authorize(inst.pubkey)
            inst.port, inst.host_key = self.plain.port, self.plain.host_key
            inst.sshd = self.plain
            inst.started += 1
            self.current = inst.id
            inst.booted.set()
            return
        if not (self.base_root and inst.lowers and inst.pubkey):
            inst.booted.set()
            return     # no root to serve: SSH never comes up
        from tests.harness.sshd import SshdRoot, new_key

        if inst.host_key is None:      # generated at first boot, kept over stop/start
            inst.host_key = new_key("ed25519")
            self._install_key(inst)
        inst.booted.clear()
        inst.imds = Imds(inst.id, self.proxy.moto_client(), inst.imds_requests)
        server = SshdRoot(inst.lowers, inst.upper / "root", [inst.pubkey],
                          host_key=inst.host_key, workdir=inst.upper,
                          on_root_ready=lambda srv: self._early_boot(inst, srv))
        try:
            server.start()
        except BaseException:
            inst.imds.close()
            inst.imds = None
            raise
        inst.sshd = server
        inst.port = server.port
        inst.started += 1
        self.current = inst.id
        late = [u for u in inst.units if not u.early]
        if late:    # after network-online, i.e. once sshd (the network, as far as we go) is up
            threading.Thread(target=self._run_units, args=(inst, server, late), daemon=True).start()
        else:
            inst.booted.set()

    # boot: amic's units, as systemd would run them ------------------------------------

    def _early_boot(self, inst: _Instance, server) -> None:
        """The root is up, sshd not yet: find amic's enabled units, run those ordered before
        sshd, and serve the root's own host key if it has one now."""
        inst.units = self._enabled_units(server)
        self._run_units(inst, server, [u for u in inst.units if u.early], last=False)
        found = server.run("cat /etc/ssh/ssh_host_ed25519_key 2>/dev/null")
        if found.returncode == 0 and "PRIVATE KEY" in found.stdout:
            import paramiko

            inst.host_key = server.host_key = paramiko.Ed25519Key.from_private_key(
                io.StringIO(found.stdout))

    @staticmethod
    def _enabled_units(server) -> list[_Unit]:
        """The units the stage2 ships that are enabled (linked into multi-user.target.wants),
        read from the root's own unit files."""
        listing = server.run(f"for u in {STAGE2_BOOT}/*.service; do n=${{u##*/}}; "
                             f"[ -e {WANTS}/\"$n\" ] && echo \"$n\"; done; :").stdout.split()
        units = []
        for name in listing:
            text = server.run(f"cat {WANTS}/{shlex.quote(name)}")
            if text.returncode == 0:
                units.append(_Unit(name, text.stdout))
        return units

    def _run_units(self, inst: _Instance, server, units: list[_Unit], last: bool = True) -> None:
        try:
            for unit in units:
                self._run_unit(inst, server, unit)
        except Exception as exc:  # noqa: BLE001 - e.g. the instance was stopped under the unit
            inst.console.append(f"stand-in: {exc}")
            self.problems.append(f"{inst.id}: {exc}")
        finally:
            if last:
                inst.booted.set()

    def _run_unit(self, inst: _Instance, server, unit: _Unit) -> None:
        unknown = [k for k in unit.conf if k.startswith(("Unit.Condition", "Unit.Assert"))
                   and k.split(".", 1)[1] not in _CONDITIONS]
        if unknown:
            raise RuntimeError(f"{unit.name}: the stand-in cannot evaluate {', '.join(unknown)}")
        for kind, shell in _CONDITIONS.items():
            for cond in unit.conf.get(f"Unit.{kind}", []):
                negate, path = cond.startswith("!"), cond.lstrip("!")
                ok = server.run(shell.format(p=shlex.quote(path))).returncode == 0
                if ok == negate:
                    inst.console.append(f"stand-in: {unit.name}: skipped ({kind}={cond})")
                    return
        env = {"AMIC_EC2": "1", "AMIC_IMDS_URL": inst.imds.url if inst.imds else ""}
        for line in unit.conf.get("Service.Environment", []):
            for word in shlex.split(line):
                key, _, value = word.partition("=")
                env[key] = value
        for command in unit.conf.get("Service.ExecStart", []):
            ignore = command.startswith("-")
            argv = shlex.split(command.lstrip("-@:+!"))
            proc = server.run("cd / && exec " + shlex.join(argv), env=env, timeout=None)
            inst.console.extend(proc.stdout.splitlines())
            unit.result = proc.returncode
            if proc.returncode != 0 and not ignore:
                return

    @staticmethod
    def _install_key(inst: _Instance) -> None:
        """What cloud-init does at first boot: append the key pair's key to the login user's
        authorized_keys (root here), so the image keeps it unless the build removes it."""
        rel = Path("root/.ssh/authorized_keys")
        old = next((layer / rel for layer in inst.lowers if (layer / rel).exists()), None)
        target = inst.upper / "root" / rel
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        text = old.read_text() if old is not None else ""
        target.write_text(text + ("" if not text or text.endswith("\n") else "\n")
                          + inst.pubkey.strip() + "\n")
        target.chmod(0o600)

    def _halt(self, inst: _Instance) -> None:
        if inst.sshd is self.plain and inst.sshd is not None:
            inst.sshd, inst.port = None, None
            return
        if inst.sshd is not None:
            server, inst.sshd, inst.port = inst.sshd, None, None
            server.stop()
        if inst.imds is not None:
            imds, inst.imds = inst.imds, None
            imds.close()

    def _stop(self, params, text):
        with self._lock:
            for iid in numbered(params, "InstanceId"):
                if iid in self.instances:
                    self._halt(self.instances[iid])

    def _start(self, params, text):
        with self._lock:
            for iid in numbered(params, "InstanceId"):
                inst = self.instances.get(iid)
                if inst and inst.sshd is None:
                    self._boot(inst)

    def _create_image(self, params, text):
        """Freeze the instance's upper as a new lower layer on top of its lowers.

        A stopped instance's upper is moved (it is what the image is); the
        instance goes on, if started again, with a fresh upper over the new
        chain, which shows it the same files. A running one (CreateImage
        without a stop) is copied, xattrs and whiteouts included."""
        iid = params.get("InstanceId", "")
        with self._lock:
            inst = self.instances.get(iid)
            if inst is None:
                return
            for ami in xml_values(text, "imageId"):
                layer = self.workdir / f"image-{ami}"
                src = inst.upper / "root"
                if not src.exists():
                    self.images[ami] = list(inst.lowers)
                elif inst.sshd is None and self.plain is None:
                    os.rename(src, layer)
                    inst.lowers = [layer, *inst.lowers]
                    self.images[ami] = list(inst.lowers)
                else:
                    subprocess.run(["cp", "-a", str(src), str(layer)], check=True)
                    self.images[ami] = [layer, *inst.lowers]
                self.image_of[ami] = iid

    def _tag_image_snapshots(self, params, text):
        """CreateImage's ``snapshot`` TagSpecification, which moto does not implement: the
        new image's snapshots carry the tags from the moment the image exists, as on EC2."""
        tags = _snapshot_tags(params)
        if not tags:
            return
        moto = self.proxy.moto_client()
        for ami in xml_values(text, "imageId"):
            image = moto.describe_images(ImageIds=[ami])["Images"][0]
            snaps = [b["Ebs"]["SnapshotId"] for b in image.get("BlockDeviceMappings", [])
                     if b.get("Ebs", {}).get("SnapshotId")]
            if snaps:
                moto.create_tags(Resources=snaps,
                                 Tags=[{"Key": k, "Value": v} for k, v in tags.items()])

    def _delete_key_pair_by_id(self, params):
        """DeleteKeyPair by ``KeyPairId`` alone, as EC2 allows (moto reads only ``KeyName``)."""
        pair_id = params.get("KeyPairId")
        if not pair_id or params.get("KeyName"):
            return
        moto = self.proxy.moto_client()
        for pair in moto.describe_key_pairs()["KeyPairs"]:
            if pair.get("KeyPairId") == pair_id:
                moto.delete_key_pair(KeyName=pair["KeyName"])

    # snapshots ---------------------------------------------------------------------

    def _instance_of_volume(self, volume_id: str) -> str | None:
        with contextlib.suppress(Exception):
            vols = self.proxy.moto_client().describe_volumes(VolumeIds=[volume_id])["Volumes"]
            for att in vols[0].get("Attachments", []):
                return att["InstanceId"]
        return None

    def _create_snapshot(self, params, text):
        """The disk as it is now: a copy of the instance's upper over its lower chain (the
        instance keeps running with its own upper); ``pending`` for ``snapshot_seconds``."""
        iid = self._instance_of_volume(params.get("VolumeId", ""))
        t0 = time.monotonic()
        with self._lock:
            inst = self.instances.get(iid or "")
            for snap in xml_values(text, "snapshotId"):
                self._ready[snap] = time.monotonic() + self.snapshot_seconds
                if inst is None:
                    continue
                layer = self.workdir / f"snapshot-{snap}"
                src = inst.upper / "root"
                if src.exists():
                    subprocess.run(["cp", "-a", str(src), str(layer)], check=True)
                    self.snapshots[snap] = [layer, *inst.lowers]
                else:
                    self.snapshots[snap] = list(inst.lowers)
                self.snapshot_of[snap] = inst.id
        self.copy_seconds += time.monotonic() - t0
        return text.replace("<status>completed</status>", "<status>pending</status>")

    def snapshot_state(self, snap: str) -> str:
        return "pending" if time.monotonic() < self._ready.get(snap, 0) else "completed"

    def _snapshot_states(self, params, text):
        root = ET.fromstring(text)
        for item in root.iter():
            if item.tag.split("}")[-1] != "item":
                continue
            fields = {el.tag.split("}")[-1]: el for el in item}
            if "snapshotId" in fields and "status" in fields:
                state = self.snapshot_state(fields["snapshotId"].text or "")
                fields["status"].text = state
                if "progress" in fields and state == "pending":
                    fields["progress"].text = "40%"
        return ET.tostring(root, encoding="unicode")

    def _register_needs_completed(self, params):
        snap = params.get("BlockDeviceMapping.1.Ebs.SnapshotId", "")
        if snap and self.snapshot_state(snap) != "completed":
            raise ApiError("IncorrectState", f"Snapshot '{snap}' is not 'completed'.")

    def _register_image(self, params, text):
        """An image whose instances start from exactly the snapshot's disk; tagged at creation
        (moto drops RegisterImage's TagSpecifications and invents a snapshot of its own:
        that one is removed and reported as the snapshot the image was registered from)."""
        snap = params.get("BlockDeviceMapping.1.Ebs.SnapshotId", "")
        moto = self.proxy.moto_client()
        for ami in xml_values(text, "imageId"):
            tags = tag_specs(params, "image")
            if tags:
                moto.create_tags(Resources=[ami], Tags=[{"Key": k, "Value": v}
                                                        for k, v in tags.items()])
            if not snap:
                continue
            with self._lock:
                if snap in self.snapshots:
                    self.images[ami] = list(self.snapshots[snap])
                    self.image_of[ami] = self.snapshot_of.get(snap, "")
            with contextlib.suppress(Exception):
                raw = moto.describe_images(ImageIds=[ami])["Images"][0]
                for bdm in raw.get("BlockDeviceMappings", []):
                    fake = bdm.get("Ebs", {}).get("SnapshotId")
                    if fake and fake != snap:
                        self._moto_snap[fake] = snap
                        with contextlib.suppress(Exception):
                            moto.delete_snapshot(SnapshotId=fake)

    def _terminate(self, params, text):
        with self._lock:
            for iid in numbered(params, "InstanceId"):
                inst = self.instances.pop(iid, None)
                if inst is not None:
                    self._halt(inst)
                    self.terminated.append(inst)
                    if not self.keep_disks:
                        shutil.rmtree(inst.upper, ignore_errors=True)

    def disks(self) -> list[Path]:
        """Every directory an instance wrote to: live and kept uppers, and frozen image layers."""
        found = [i.upper for i in [*self.instances.values(), *self.terminated] if i.upper.exists()]
        found += sorted(p for p in self.workdir.glob("image-*") if p.is_dir())
        found += sorted(p for p in self.workdir.glob("snapshot-*") if p.is_dir())
        return found

    def _ebs_root(self, params, text):
        """moto calls every AMI's root device ``standard`` (instance store); all of them here
        have an EBS snapshot as their root, as real EC2 reports them (Packer insists on it)."""
        text = text.replace("<rootDeviceType>standard</rootDeviceType>",
                            "<rootDeviceType>ebs</rootDeviceType>")
        for fake, real in list(self._moto_snap.items()):
            text = text.replace(fake, real)
        return text

    def fingerprint_lines(self, inst: _Instance) -> list[str]:
        import hashlib

        if inst.host_key is None or not self.print_fingerprints:
            return []
        blob = inst.host_key.asbytes()
        if self.wrong_fingerprint:
            blob = b"not-the-key" + blob
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        kind = {"ssh-ed25519": "ED25519", "ssh-rsa": "RSA"}.get(inst.host_key.get_name(), "ECDSA")
        bits = inst.host_key.get_bits()
        return ["ci-info: no authorized SSH keys fingerprints found for user admin.",
                "ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----",
                f"ec2: {bits} SHA256:{digest} root@ip-10-0-0-1 ({kind})",
                "ec2: -----END SSH HOST KEY FINGERPRINTS-----",
                "ec2: #############################################################"]

    def _console(self, params, text):
        inst = self.instances.get(params.get("InstanceId", ""))
        if inst is None:
            return text
        root = ET.fromstring(text)
        for el in root.iter():
            if el.tag.split("}")[-1] == "output":
                old = el.text or ""
                try:
                    old = base64.b64decode(old).decode()
                except ValueError:
                    pass
                new = old + "".join(f"{line}\n" for line in
                                    [*self.fingerprint_lines(inst), *list(inst.console)])
                el.text = base64.b64encode(new.encode()).decode()
        return ET.tostring(root, encoding="unicode")

    def close(self) -> None:
        with self._lock:
            for inst in list(self.instances.values()):
                self._halt(inst)
            self.instances.clear()
        self.relay.close()


class PlainSshd:
    """A real sshd on loopback whose every session runs a fixed harmless command.

    Enough for what happens before a build runs anything: host key checks,
    authentication with the build's key, backoff. Sessions never touch the
    test machine's files (``ForceCommand`` prints a word and exits).
    """

    def __init__(self, workdir: Path) -> None:
        import paramiko

        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        key = self.dir / "host_ed25519"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
        self.host_key = paramiko.Ed25519Key.from_private_key_file(str(key))
        self.auth = self.dir / "authorized_keys"
        self.auth.write_text("")
        self.port = free_port()
        cfg = self.dir / "sshd_config"
        cfg.write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {key}
PidFile {self.dir}/sshd.pid
AuthorizedKeysFile {self.auth}
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
ForceCommand echo stand-in
""")
        os.chmod(key, 0o600)
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(cfg)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port)

    def authorize(self, pubkey: str) -> None:
        with open(self.auth, "a") as fh:
            fh.write(pubkey + "\n")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# -- one object for tests ---------------------------------------------------------

class FakeEc2:
    """moto + proxy + stand-in, with the environment a build needs to reach them."""

    def __init__(self, moto: MotoServer, proxy: Ec2Proxy, workdir: Path,
                 base_root: Path | None) -> None:
        self.moto = moto
        self.proxy = proxy
        self.workdir = workdir
        self.base_root = base_root
        self.standin = StandIn(proxy, workdir / "standin", base_root)

    @property
    def env(self) -> dict[str, str]:
        # AWS_ENDPOINT_URL sends every other service (autoscaling, sts, ...) to moto too: no
        # test can reach real AWS, whatever it calls.
        return {"AWS_ENDPOINT_URL_EC2": self.proxy.url, "AWS_ENDPOINT_URL": self.moto.url,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
                "AWS_REGION": REGION, "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"}

    def ssh_args(self) -> list[str]:
        return ["--ssh-host", "127.0.0.1", "--ssh-port", str(self.standin.relay_port),
                "--ssh-cidr", "127.0.0.1/32"]

    def client(self, direct: bool = True):
        """A boto3 client for assertions (``direct``: straight to moto, not counted)."""
        import boto3

        return boto3.client("ec2", region_name=REGION, aws_access_key_id="testing",
                            aws_secret_access_key="testing",
                            endpoint_url=self.moto.url if direct else self.proxy.url)

    def register_debian12(self) -> str:
        return self.standin.register_base(self.client(), "debian-12-amd64-20240717-1811")

    def reset(self) -> None:
        self.standin.close()
        self.moto.reset()
        self.proxy.reset()
        self.proxy.before.clear()
        self.proxy.after.clear()
        self.proxy.forward.clear()
        shutil.rmtree(self.workdir / "standin", ignore_errors=True)
        self.standin = StandIn(self.proxy, self.workdir / "standin", self.base_root)

    # assertions ---------------------------------------------------------------

    def leftovers(self, build_id: str | None = None) -> dict[str, list]:
        """Instances not terminated, key pairs and security groups amic created (by tag)."""
        ec2 = self.client()
        filt = [{"Name": "tag-key", "Values": ["amic:tool"]}]
        if build_id:
            filt = [{"Name": "tag:amic:build-id", "Values": [build_id]}]
        running = [i["InstanceId"]
                   for r in ec2.describe_instances(Filters=filt)["Reservations"]
                   for i in r["Instances"] if i["State"]["Name"] not in ("terminated", "shutting-down")]
        keys = [k["KeyName"] for k in ec2.describe_key_pairs(Filters=filt)["KeyPairs"]]
        groups = [g["GroupId"] for g in ec2.describe_security_groups(Filters=filt)["SecurityGroups"]]
        return {"instances": running, "key_pairs": keys, "security_groups": groups}

    def all_leftovers(self) -> dict[str, list]:
        """Like ``leftovers`` but without relying on tags (catches untagged resources too)."""
        ec2 = self.client()
        running = [i["InstanceId"] for r in ec2.describe_instances()["Reservations"]
                   for i in r["Instances"] if i["State"]["Name"] not in ("terminated", "shutting-down")]
        keys = [k["KeyName"] for k in ec2.describe_key_pairs()["KeyPairs"]]
        groups = [g["GroupId"] for g in ec2.describe_security_groups()["SecurityGroups"]
                  if g["GroupName"] != "default"]
        return {"instances": running, "key_pairs": keys, "security_groups": groups}

    def created_untagged(self) -> list[str]:
        """Every creating call seen by the proxy that did not carry amic's tags."""
        bad = []
        for action, params in self.proxy.log:
            if action in ("RunInstances", "ImportKeyPair", "CreateKeyPair", "CreateSecurityGroup",
                          "CreateImage", "CreateSnapshot", "RegisterImage"):
                keys = {v for k, v in params.items()
                        if k.startswith("TagSpecification.") and k.endswith(".Key")}
                if "amic:tool" not in keys or "amic:build-id" not in keys:
                    bad.append(action)
        return bad


@contextlib.contextmanager
def fake_ec2(workdir: Path, base_root: Path | None = None):
    moto = MotoServer().start()
    proxy = Ec2Proxy(moto.port).start()
    fake = FakeEc2(moto, proxy, workdir, base_root)
    try:
        yield fake
    finally:
        fake.standin.close()
        proxy.stop()
        moto.stop()


@contextlib.contextmanager
def standin_ec2(tmp_path_factory):
    """moto + proxy + instance stand-in over the cached Debian base, keeping instance disks
    for inspection: what the end-to-end ec2 test modules share."""
    from amic.targets.local import rootfs

    from tests.harness.sshd import require_sshd_root

    require_sshd_root()
    base = rootfs.ensure_base()
    os.makedirs("/run/sshd", exist_ok=True)
    with fake_ec2(tmp_path_factory.mktemp("ec2"), base) as fake:
        fake.standin.keep_disks = True    # tests search and inspect the instances' disks
        yield fake


# -- helpers the end-to-end modules share ----------------------------------------------------

def amic_exe() -> str:
    return shutil.which("amic", path=os.path.dirname(sys.executable)) or "amic"


def assert_clean(fake) -> None:
    """Through the EC2 API: nothing of any build is left, and every create call carried tags."""
    left = fake.leftovers()
    assert left == {"instances": [], "key_pairs": [], "security_groups": []}, left
    left = fake.all_leftovers()
    assert left == {"instances": [], "key_pairs": [], "security_groups": []}, left
    assert fake.created_untagged() == []
    # and the stand-in agrees: no instance's sshd is still up
    assert not any(i.sshd for i in fake.standin.instances.values())


def image_file(fake, ami: str, path: str) -> Path | None:
    """A file as an instance launched from ``ami`` sees it (top-most layer wins)."""
    return _layered_file(fake.standin.images[ami], path)


def disk_file(fake, snapshot_id: str, path: str) -> Path | None:
    """A file as snapshot ``snapshot_id`` captured it."""
    return _layered_file(fake.standin.snapshots[snapshot_id], path)


def _layered_file(layers: list[Path], path: str) -> Path | None:
    for layer in layers:
        candidate = layer / path.lstrip("/")
        if candidate.exists() or candidate.is_symlink():
            st = candidate.lstat()
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return None      # an overlayfs whiteout: deleted in this layer
            return candidate
    return None
