"""moto in server mode and the loopback proxy in front of it (counts, faults, hooks).

Part of the fake EC2 ``tests/harness/ec2/`` (the package doc is the whole picture)."""

from __future__ import annotations

import collections
import contextlib
import http.client
import http.server
import os
import re
import socket
import socketserver
import subprocess
import sys
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET

DEBIAN_OWNER = "136693071363"
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


# -- moto -------------------------------------------------------------------

class MotoServer:
    """``moto_server`` as a subprocess on a random loopback port."""

    def __init__(self, account: str = DEBIAN_OWNER, env: dict[str, str] | None = None) -> None:
        self.extra_env = dict(env or {})
        """More environment for the server (``INITIAL_NO_AUTH_ACTION_COUNT``: IAM enforced
        after that many requests; ``tests/harness/ec2/iam.py``)."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.account = account
        self.proc: subprocess.Popen | None = None

    def start(self) -> MotoServer:
        env = {**os.environ, "MOTO_EC2_LOAD_DEFAULT_AMIS": "false", "MOTO_ACCOUNT_ID": self.account,
               **self.extra_env}
        self.log = open(os.devnull, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port)
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


def signed_region(headers: dict[str, str]) -> str:
    """The region a SigV4 request was signed for (its credential scope), else ``REGION``."""
    auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    match = re.search(r"Credential=[^/]+/\d{8}/([^/]+)/", auth)
    return match.group(1) if match else REGION


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
        self.answered: list[tuple[str, dict[str, str]]] = []
        """(action, params) of the calls answered with success (``log`` has every attempt)."""
        self.agents: list[tuple[str, str]] = []
        """(action, User-Agent) of every call: who asked (boto3 or amic's own Query calls)."""
        self.before: dict[str, list] = collections.defaultdict(list)
        self.after: dict[str, list] = collections.defaultdict(list)
        self.forward: dict[str, list] = collections.defaultdict(list)
        self.answer: dict[str, object] = {}
        """``answer[action](params, region) -> xml body``: EC2 calls moto lacks, answered here (after
        the ``before`` hooks, which refuse what EC2 refuses)."""
        self._faults: list[list] = []   # [action or "*", remaining, code, status]
        self._armed: list[list] = []    # [create action, describe action, times, code, pending]
        self._rewrites: list[list] = []  # [action, old, new, remaining]
        self.gates: list = []
        """``gate(action, params)`` for every call, after the injected faults: may raise
        ``ApiError`` (the strict stand-in's throttle, ``strict.py``)."""
        self._lock = threading.Lock()
        self.injected = 0
        self.credentials = ("testing", "testing")
        """The harness's own key for moto (an IAM admin's when IAM is enforced)."""
        self.resign = None
        """``resign(method, path, headers, body) -> headers`` signs a body a ``forward`` hook
        changed (moto checks signatures when IAM is enforced)."""
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
            self.answered.clear()
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

    def calls_of(self, action: str, *, answered: bool = False) -> list[dict[str, str]]:
        """The parameters of every ``action`` call seen (``answered``: that succeeded), in order."""
        with self._lock:
            return [p for a, p in (self.answered if answered else self.log) if a == action]

    def moto_client(self):
        """A boto3 client straight to moto (not counted, no hooks): for the hooks' own look-ups."""
        import boto3

        return boto3.client("ec2", region_name=REGION, aws_access_key_id=self.credentials[0],
                            aws_secret_access_key=self.credentials[1],
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
            for hook in self.before.get("*", ()):   # every call, first (IAM: iam.py)
                hook(action, params, headers)
            for gate in self.gates:                  # then EC2's throttle (strict.py)
                gate(action, params)
            for hook in self.before.get(action, ()):
                hook(params)
        except ApiError as exc:
            return exc.status, [("Content-Type", "text/xml")], _error_xml(exc.code, exc.message)
        if action in self.answer:
            try:
                text = self.answer[action](params, signed_region(headers))
                for hook in self.after.get(action, ()):     # as for moto's answers
                    text = hook(params, text) or text
                data = text.encode()
            except ApiError as exc:
                return exc.status, [("Content-Type", "text/xml")], _error_xml(exc.code, exc.message)
            with self._lock:
                self.answered.append((action, params))
            return 200, [("Content-Type", "text/xml")], data
        if self.forward.get(action):
            sent = dict(params)
            for hook in self.forward[action]:
                sent = hook(sent)
            body = urllib.parse.urlencode(sent).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=120)
        # Host as signed: moto checks SigV4 signatures when IAM is enforced
        fwd = {k: v for k, v in headers.items()
               if k.lower() not in ("connection", "content-length")}
        if self.forward.get(action) and self.resign:
            fwd = self.resign(method, path, fwd, body)
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
            with self._lock:
                self.answered.append((action, params))
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
