"""What an instance of the fake EC2 boots with (the SSH relay, IMDSv2, systemd units), and
the helpers that read and strip a call's snapshot TagSpecifications.

Part of the fake EC2 ``tests/harness/ec2/`` (the package doc is the whole picture)."""

from __future__ import annotations

import collections
import contextlib
import http.client
import http.server
import secrets
import socket
import socketserver
import threading
import time
import urllib.parse
from pathlib import Path


class Relay:
    """A TCP listener on one fixed port forwarding each connection to ``target()``.

    ``idle_timeout``: a connection that carries no byte either way for this many seconds
    is cut, as the stateful devices between a builder and an instance do to idle flows
    (an AWS NAT gateway after 350 s, "Troubleshoot NAT gateways", Amazon VPC User Guide;
    the strict stand-in scales it down). ``None`` never cuts, as the instance itself.
    """

    def __init__(self, target, host: str = "127.0.0.1", port: int = 0,
                 idle_timeout: float | None = None) -> None:
        self.target = target
        self.idle_timeout = idle_timeout
        self.idle_cuts = 0
        """Connections cut for silence so far."""
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
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
            # The 5 s was for connecting only: an SSH session may stay silent for minutes
            # (an INIT running `sleep 300`), as a real instance's TCP connection does.
            upstream.settimeout(None)
            flow = {"last": time.monotonic(), "ended": False}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b, flow), daemon=True).start()
            if self.idle_timeout is not None:
                threading.Thread(target=self._watch, args=(client, upstream, flow),
                                 daemon=True).start()

    def _watch(self, client, upstream, flow):
        while not flow["ended"]:
            left = flow["last"] + self.idle_timeout - time.monotonic()
            if left <= 0:
                self.idle_cuts += 1
                self._cut(client, upstream)
                return
            time.sleep(min(left, 0.5))

    @staticmethod
    def _cut(*socks):
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _pipe(self, src, dst, flow):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                flow["last"] = time.monotonic()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            flow["ended"] = True
            self._cut(src, dst)

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


class Unit:
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


CONDITIONS = {"ConditionPathExists": "test -e {p}", "ConditionFileIsExecutable": "test -f {p} && test -x {p}",
               "ConditionPathIsDirectory": "test -d {p}", "ConditionFileNotEmpty": "test -s {p}"}


class Instance:
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
        self.units: list[Unit] = []
        """amic's boot units enabled in the root at the last boot."""
        self.console: list[str] = []
        """What the boot units printed (journal+console), all boots."""
        self.booted = threading.Event()
        """Set when the last boot's units have all finished (at once when there are none)."""


def snapshot_tags(params: dict[str, str]) -> dict[str, str]:
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


def without_snapshot_tags(params: dict[str, str]) -> dict[str, str]:
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


def loopback_address(n: int) -> str:
    """The ``n``-th instance's own address (``127.1.0.2`` on): all of 127/8 is loopback."""
    return f"127.1.{n // 250}.{n % 250 + 2}"


def with_public_addresses(text: str, addresses: dict[str, str]) -> str | None:
    """A DescribeInstances answer with each known instance's ``ipAddress`` set to its own
    loopback address (moto invents public addresses nobody can reach)."""
    import xml.etree.ElementTree as ET

    if not any(iid in text for iid in addresses):
        return None
    root = ET.fromstring(text)
    ns = root.tag[1:].split("}", 1)[0] if root.tag.startswith("{") else ""
    if ns:
        ET.register_namespace("", ns)
    for item in root.iter():
        fields = {el.tag.rsplit("}", 1)[-1]: el for el in item}
        iid = fields.get("instanceId")
        if iid is None or iid.text not in addresses or "instanceState" not in fields:
            continue
        ip = fields.get("ipAddress")
        if ip is None:
            ip = ET.SubElement(item, f"{{{ns}}}ipAddress" if ns else "ipAddress")
        ip.text = addresses[iid.text]
    return ET.tostring(root, encoding="unicode")
