"""A stand-in for the EC2 instance metadata service, IMDSv2 only, on loopback.

As EC2 answers with ``HttpTokens=required``: ``PUT /latest/api/token`` with
``X-aws-ec2-metadata-token-ttl-seconds`` (1..21600; missing or out of range:
400) gives a token; a PUT carrying ``X-Forwarded-For`` is refused (403), as
EC2 refuses tokens to requests that went through a proxy; every GET needs a
live token in ``X-aws-ec2-metadata-token`` (none, unknown or expired: 401).
It serves ``meta-data/`` (instance-id, hostname, local-hostname,
public-keys/0/openssh-key, tags/instance/* when ``tags`` is not None, else
404 as with instance metadata tags off) and ``user-data`` (404 without).
Every request is recorded in ``requests`` (method, path, status).

A QEMU guest reaches it through a ``guestfwd`` whose ``cmd:`` is this file run
as a script (:func:`guestfwd`): one relay process per guest connection, so
each of curl's connections is its own (QEMU's ``tcp:`` guestfwd would be one
connection for all).
"""

from __future__ import annotations

import secrets
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
IMDS_ADDRESS = "169.254.169.254"


class Imds:
    """The stand-in's state and server; a context manager (serves on 127.0.0.1:port)."""

    def __init__(self, *, instance_id: str, hostname: str, public_key: str | None = None,
                 key_name: str = "amic-test", tags: dict[str, str] | None = None,
                 user_data: str | None = None) -> None:
        self.instance_id, self.hostname = instance_id, hostname
        self.public_key, self.key_name = public_key, key_name
        self.tags, self.user_data = tags, user_data
        self.tokens: dict[str, float] = {}
        self.requests: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def __enter__(self) -> Imds:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def meta_data(self) -> dict[str, str]:
        """Leaf paths under ``meta-data/`` and their values."""
        leaves = {"instance-id": self.instance_id, "hostname": self.hostname,
                  "local-hostname": self.hostname, "ami-id": "ami-0123456789abcdef0",
                  "instance-type": "m5.large"}
        if self.public_key is not None:
            leaves["public-keys/0/openssh-key"] = self.public_key.strip() + "\n"
        for k, v in (self.tags or {}).items():
            leaves[f"tags/instance/{k}"] = v
        return leaves

    def answer(self, path: str) -> tuple[int, str]:
        """(status, body) for ``GET path`` (after the token check)."""
        if path == "/latest/user-data":
            return (404, "") if self.user_data is None else (200, self.user_data)
        prefix = "/latest/meta-data/"
        if not (path + "/").startswith(prefix):
            return 404, ""
        rel = path[len(prefix):]
        leaves = self.meta_data()
        if rel.startswith("tags/instance") and self.tags is None:
            return 404, ""       # instance metadata tags not allowed on this instance
        if rel == "public-keys" or rel == "public-keys/":
            return (200, f"0={self.key_name}") if self.public_key is not None else (404, "")
        if rel in leaves:
            return 200, leaves[rel]
        under = rel.rstrip("/") + "/" if rel else ""
        names = sorted({k[len(under):].split("/")[0] + ("/" if "/" in k[len(under):] else "")
                        for k in leaves if k.startswith(under)})
        if rel.startswith("public-keys/0"):
            names = ["openssh-key"] if self.public_key is not None else []
        return (200, "\n".join(names)) if names else (404, "")

    def new_token(self, ttl: int) -> str:
        token = secrets.token_urlsafe(42)
        with self.lock:
            self.tokens[token] = time.monotonic() + ttl
        return token

    def token_ok(self, token: str | None) -> bool:
        with self.lock:
            expiry = self.tokens.get(token or "")
        return expiry is not None and expiry > time.monotonic()

    def record(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.requests.append((method, path, status))

    def served(self, path: str) -> bool:
        """True when a GET of ``path`` (under /latest/) was answered 200."""
        return ("GET", f"/latest/{path}", 200) in self.requests


def handler_for(imds: Imds) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "EC2ws"
        sys_version = ""

        def reply(self, status: int, body: str = "") -> None:
            data = body.encode()
            imds.record(self.command, self.path, status)
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:   # noqa: N802 (http.server's name)
            if self.path != "/latest/api/token":
                return self.reply(404 if self.path.startswith("/latest/") else 403)
            if self.headers.get("X-Forwarded-For"):
                return self.reply(403)
            ttl = self.headers.get(TTL_HEADER, "")
            if not (ttl.isascii() and ttl.isdigit() and 1 <= int(ttl) <= 21600):
                return self.reply(400)
            self.reply(200, imds.new_token(int(ttl)))

        def do_GET(self) -> None:   # noqa: N802
            if not imds.token_ok(self.headers.get(TOKEN_HEADER)):
                return self.reply(401)
            self.reply(*imds.answer(self.path))

        def log_message(self, *args) -> None:
            pass

    return Handler


def guestfwd(port: int, address: str = IMDS_ADDRESS) -> str:
    """The ``guestfwd=`` value of a QEMU user netdev that sends the guest's
    ``address``:80 to the stand-in on ``port`` (the netdev's ``net=`` must hold
    ``address``: QEMU refuses a guestfwd outside the guest's network)."""
    return f"tcp:{address}:80-cmd:{sys.executable} {__file__} {port}"


def relay(port: int) -> None:
    """One guest connection (QEMU gives it as stdin/stdout) to 127.0.0.1:``port``."""
    import os

    sock = socket.create_connection(("127.0.0.1", port))

    def upstream() -> None:
        while data := os.read(0, 65536):
            sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)

    threading.Thread(target=upstream, daemon=True).start()
    while data := sock.recv(65536):
        os.write(1, data)


if __name__ == "__main__":
    relay(int(sys.argv[1]))
