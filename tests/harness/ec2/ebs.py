"""The EBS direct APIs as AWS documents them, served on loopback beside the EC2 proxy.

Part of the fake EC2 ``tests/harness/ec2/``. moto 5.2.5 has these calls but too loosely
to trust (a 512-byte block size, no checksum validation, short blocks and indexes past the
volume accepted, ``completed`` before CompleteSnapshot, ParentSnapshotId ignored,
ListChangedBlocks walking one snapshot), so this server answers them itself (REST-JSON,
what botocore and the AWS CLI send to ``AWS_ENDPOINT_URL_EBS``):

- StartSnapshot: ``VolumeSize`` 1..65536 GiB (at least the parent's), ``Tags`` checked
  as EC2 checks tags, ``ParentSnapshotId`` must be a ``completed`` snapshot, ``ClientToken``
  makes the call idempotent (another request with the same token: ConflictException),
  ``Timeout`` minutes (scaled by ``timeout_scale``) after which a snapshot never completed
  turns ``error``. The snapshot is a real moto EC2 snapshot (a volume of that size is made,
  snapshotted with the tags at creation and deleted), so DescribeSnapshots, DeleteSnapshot
  and RegisterImage see it; this server keeps its blocks and its state, and rewrites its
  ``status`` in DescribeSnapshots (``pending`` until CompleteSnapshot).
- A new snapshot is not writable at once: for ``write_lag`` seconds after StartSnapshot,
  PutSnapshotBlock and CompleteSnapshot answer ResourceNotFoundException ("The snapshot
  ... does not exist"), as EBS does (awslabs/coldsnap#43; the EBS team's advice relayed
  in coldsnap#56: wait and retry, for up to ~2 minutes).
- PutSnapshotBlock: only to a ``pending`` snapshot; ``BlockSize`` 524288 exactly (a short
  block is refused), index below ``VolumeSize * 2048``, SHA256 checksum (base64) checked.
- CompleteSnapshot: ``ChangedBlocksCount`` must be the number of blocks written; a
  ``Checksum`` given must be SHA256 with ``LINEAR`` aggregation: the SHA-256 of the written
  blocks' raw SHA-256 digests concatenated in ascending block index order. Answered
  ``pending`` (as AWS does): sealed, ``completed`` ``seal_seconds`` later.
- ListSnapshotBlocks / ListChangedBlocks: ``completed`` snapshots only ("Can a snapshot be
  accessed using the EBS direct APIs if it has a pending status? No.", EBS direct APIs
  FAQ), a child sees its parents' blocks, changed blocks across a parent chain (unrelated
  snapshots: ValidationException UNRELATED_SNAPSHOTS), ``MaxResults`` at least 100,
  ``NextToken`` (server side, bound to the call) and fresh block tokens at every listing.
- GetSnapshotBlock: a block token from a listing of that snapshot and index.
- RequestThrottledException: a token bucket per snapshot for the block calls and one per
  account for the others (``put_rate``/``put_burst``, ``api_rate``/``api_burst``).
- ``fail(action, times)``: the next calls answer HTTP 500 InternalServerException.
- ``authorizers``: ``f(action, snapshots, request, headers)`` for every signed call, before it
  is served (``iam.py`` judges it by docs/ec2.md's policy and raises AccessDeniedException).

Block data lives in ``workdir`` by content hash (a disk is mostly repeated blocks).
"""

from __future__ import annotations

import base64
import collections
import hashlib
import http.server
import json
import os
import re
import socketserver
import threading
import time
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.harness.ec2.api import ApiError
from tests.harness.ec2.ebs_model import (BLOCK_SIZE, BLOCKS_PER_GIB, SEAL_SECONDS, WRITE_LAG,
                                         Bucket, EbsError, Snap, check_signed, invalid,
                                         not_found, start_request)



class EbsStandIn:
    def __init__(self, proxy, workdir: Path) -> None:
        self.proxy = proxy
        self.workdir = workdir
        (workdir / "blocks").mkdir(parents=True, exist_ok=True)
        self.snaps: dict[str, Snap] = {}
        self.calls: collections.Counter[str] = collections.Counter()
        self.puts: list[tuple[str, int]] = []
        """(snapshot, index) of every PutSnapshotBlock that succeeded."""
        self.refused: collections.Counter[str] = collections.Counter()
        """Error kind -> how many calls were answered with it."""
        self.put_rate, self.put_burst = 1000.0, 1000.0
        self.api_rate, self.api_burst = 50.0, 50.0
        self.timeout_scale = 1.0
        self.write_lag = WRITE_LAG
        self.seal_seconds = SEAL_SECONDS
        self._writable_at: dict[str, float] = {}
        self.on_created: list = []
        """``f(snapshot_id)`` for each snapshot started (the strict proxy's consistency lag)."""
        self.authorizers: list = []
        """``f(action, snapshots, request, headers)``: may refuse a call (raise EbsError)."""
        self._buckets: dict[str, Bucket] = {}
        self._tokens: dict[str, tuple[str, int, float]] = {}
        self._pages: dict[str, tuple[str, str, int, float]] = {}
        self._client_tokens: dict[str, tuple[str, str]] = {}
        self._faults: list[list] = []
        self._lock = threading.RLock()
        self.hook(proxy)
        standin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, headers, data = standin.handle(self.command, self.path,
                                                       self.headers, body)
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = _any

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def hook(self, proxy) -> None:
        """(Again after ``FakeEc2.reset``) the EC2 side: status, RegisterImage, DeleteSnapshot."""
        proxy.after["DescribeSnapshots"].append(self._statuses)
        proxy.before["RegisterImage"].append(self._register_needs_completed)
        proxy.after["DeleteSnapshot"].append(self._deleted)

    def reset(self, proxy) -> None:
        """Forget every snapshot, count and fault; hook a fresh proxy (``FakeEc2.reset``)."""
        with self._lock:
            for seq in (self.snaps, self.calls, self.refused, self._buckets, self._tokens,
                        self._pages, self._client_tokens):
                seq.clear()
            self.puts.clear()
            self._faults.clear()
            self.authorizers.clear()
            self.put_rate, self.put_burst = 1000.0, 1000.0
            self.api_rate, self.api_burst = 50.0, 50.0
            self.timeout_scale = 1.0
            self.write_lag = WRITE_LAG
            self.seal_seconds = SEAL_SECONDS
            self._writable_at.clear()
        self.hook(proxy)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fail(self, action: str, times: int = 1) -> None:
        with self._lock:
            self._faults.append([action, times])

    def state(self, snap: str) -> str | None:
        with self._lock:
            s = self.snaps.get(snap)
            return s.advance(time.monotonic()) if s is not None else None

    # -- HTTP ------------------------------------------------------------------------------

    ROUTES = (("POST", re.compile(r"^/snapshots$"), "StartSnapshot"),
              ("POST", re.compile(r"^/snapshots/completion/([^/]+)$"), "CompleteSnapshot"),
              ("PUT", re.compile(r"^/snapshots/([^/]+)/blocks/([^/]+)$"), "PutSnapshotBlock"),
              ("GET", re.compile(r"^/snapshots/([^/]+)/blocks/([^/]+)$"), "GetSnapshotBlock"),
              ("GET", re.compile(r"^/snapshots/([^/]+)/blocks$"), "ListSnapshotBlocks"),
              ("GET", re.compile(r"^/snapshots/([^/]+)/changedblocks$"), "ListChangedBlocks"))

    def handle(self, method: str, path: str, headers, body: bytes):
        url = urllib.parse.urlsplit(path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        action, args = "?", ()
        for verb, pattern, name in self.ROUTES:
            m = pattern.match(urllib.parse.unquote(url.path))
            if verb == method and m:
                action, args = name, m.groups()
                break
        try:
            if action == "?":
                raise EbsError("ValidationException", 400, f"no such operation {method} {url.path}")
            self.calls[action] += 1
            check_signed(headers)
            snaps = [*args[:1], *([query["firstSnapshotId"]] if query.get("firstSnapshotId")
                                  else [])]
            for authorize in self.authorizers:
                authorize(action, snaps, start_request(action, body), headers)
            self._gate(action, args[0] if args and action.endswith("Block") else None)
            return getattr(self, "_" + action)(*args, query=query, headers=headers, body=body)
        except EbsError as exc:
            self.refused[exc.kind] += 1
            out = {"Message": exc.message, **({"Reason": exc.reason} if exc.reason else {})}
            return exc.status, {"Content-Type": "application/json",
                                "x-amzn-ErrorType": exc.kind}, json.dumps(out).encode()

    def _gate(self, action: str, snap: str | None) -> None:
        with self._lock:
            for fault in self._faults:
                if fault[1] > 0 and fault[0] in ("*", action):
                    fault[1] -= 1
                    raise EbsError("InternalServerException", 500, "injected")
            key = f"{action}:{snap}" if snap else "account"
            if key not in self._buckets:
                self._buckets[key] = (Bucket(self.put_rate, self.put_burst) if snap
                                      else Bucket(self.api_rate, self.api_burst))
            if not self._buckets[key].take():
                raise EbsError("RequestThrottledException", 400,
                               "The number of API requests has exceeded the maximum allowed "
                               "API request throttling limit for the snapshot.",
                               "RESOURCE_LEVEL_THROTTLE" if snap else "ACCOUNT_THROTTLED")

    def _snap(self, snap: str, status: str | None = "completed") -> Snap:
        state = self.state(snap)
        if state is None:
            raise not_found(snap)
        if status is not None and state != status:
            raise invalid(f"The snapshot '{snap}' is {state}, not {status}.",
                          "INVALID_SNAPSHOT_ID")
        return self.snaps[snap]

    # -- the calls -------------------------------------------------------------------------

    def _StartSnapshot(self, *, query, headers, body):
        req = start_request("StartSnapshot", body)
        size = req.get("VolumeSize")
        if not isinstance(size, int) or not 1 <= size <= 65536:
            raise invalid(f"VolumeSize {size!r} must be 1 to 65536 GiB", "INVALID_VOLUME_SIZE")
        tags = req.get("Tags") or []
        if len(tags) > 50 or any(
                not t.get("Key") or len(t["Key"]) > 128 or len(t.get("Value", "")) > 256
                or t["Key"].lower().startswith("aws:") for t in tags):
            raise invalid("invalid tags", "INVALID_TAG")
        timeout = req.get("Timeout", 60)
        if not isinstance(timeout, int) or not 10 <= timeout <= 4320:
            raise invalid("Timeout must be 10 to 4320 minutes")
        token = req.get("ClientToken")
        fingerprint = json.dumps({k: v for k, v in req.items() if k != "ClientToken"},
                                 sort_keys=True)
        with self._lock:
            if token and token in self._client_tokens:
                snap_id, seen = self._client_tokens[token]
                if seen != fingerprint:
                    raise EbsError("ConflictException", 409, "The request uses the same client "
                                   "token as a previous, but non-identical request.")
                return 201, {"Content-Type": "application/json"}, self._started(self.snaps[snap_id])
            parent = req.get("ParentSnapshotId")
            if parent:
                p = self._snap(parent)
                if size < p.volume_size:
                    raise invalid(f"VolumeSize {size} is less than the parent's "
                                  f"{p.volume_size}", "INVALID_VOLUME_SIZE")
        snap_id = self._moto_snapshot(size, tags, req.get("Description", ""))
        now = time.monotonic()
        s = Snap(snap_id, size, parent or None, tags, req.get("Description", ""), time.time(),
                 now + timeout * 60 * self.timeout_scale)
        with self._lock:
            self.snaps[snap_id] = s
            self._writable_at[snap_id] = now + self.write_lag
            if token:
                self._client_tokens[token] = (snap_id, fingerprint)
        for f in self.on_created:
            f(snap_id)
        return 201, {"Content-Type": "application/json"}, self._started(s)

    def _started(self, s: Snap) -> bytes:
        out = {"SnapshotId": s.id, "OwnerId": self.proxy_owner(), "Status": s.status,
               "StartTime": s.start, "VolumeSize": s.volume_size, "BlockSize": BLOCK_SIZE,
               "Tags": s.tags, "Description": s.description, "SseType": "sse-ebs"}
        if s.parent:
            out["ParentSnapshotId"] = s.parent
        return json.dumps(out).encode()

    def proxy_owner(self) -> str:
        from tests.harness.ec2.api import DEBIAN_OWNER

        return DEBIAN_OWNER

    def _moto_snapshot(self, size: int, tags: list[dict], description: str) -> str:
        moto = self.proxy.moto_client()
        vol = moto.create_volume(Size=size, AvailabilityZone="us-east-1a")["VolumeId"]
        try:
            spec = [{"ResourceType": "snapshot", "Tags": tags}] if tags else []
            return moto.create_snapshot(VolumeId=vol, Description=description,
                                        TagSpecifications=spec)["SnapshotId"]
        finally:
            moto.delete_volume(VolumeId=vol)

    def writable_now(self, snap: str) -> None:
        """End ``snap``'s write lag (a test that has shown the refusal goes on at once)."""
        with self._lock:
            self._writable_at.pop(snap, None)

    def sealed_now(self, snap: str) -> None:
        """End the sealing of a completed ``snap`` (a test that has shown it pending)."""
        with self._lock:
            if snap in self.snaps and self.snaps[snap].completes_at is not None:
                self.snaps[snap].completes_at = time.monotonic()

    def _not_yet_writable(self, snap: str) -> None:
        if time.monotonic() < self._writable_at.get(snap, 0.0):
            raise not_found(snap)

    def _PutSnapshotBlock(self, snap, index, *, query, headers, body):
        s = self._snap(snap, "pending")
        self._not_yet_writable(snap)
        try:
            idx = int(index)
        except ValueError:
            raise invalid(f"block index {index!r} is not a number", "INVALID_BLOCK") from None
        if not 0 <= idx < s.volume_size * BLOCKS_PER_GIB:
            raise invalid(f"block index {idx} is outside the {s.volume_size} GiB volume",
                          "INVALID_BLOCK")
        length = headers.get("x-amz-Data-Length")
        if length != str(BLOCK_SIZE) or len(body) != BLOCK_SIZE:
            raise invalid(f"DataLength {length} ({len(body)} bytes sent) must be {BLOCK_SIZE}",
                          "INVALID_BLOCK")
        if headers.get("x-amz-Checksum-Algorithm") != "SHA256":
            raise invalid("ChecksumAlgorithm must be SHA256")
        progress = headers.get("x-amz-Progress")
        if progress is not None and not (progress.isdigit() and int(progress) <= 100):
            raise invalid(f"Progress {progress!r} must be 0 to 100")
        digest = hashlib.sha256(body).digest()
        checksum = base64.b64encode(digest).decode()
        if headers.get("x-amz-Checksum") != checksum:
            raise invalid("The checksum does not match the block data.", "INVALID_BLOCK")
        path = self._path(digest.hex())
        if not path.exists():
            tmp = path.with_name(f".{uuid.uuid4().hex}")
            tmp.write_bytes(body)
            os.replace(tmp, path)
        with self._lock:
            if s.status != "pending" or s.completes_at is not None:
                state = "sealed by CompleteSnapshot" if s.status == "pending" else s.status
                raise invalid(f"The snapshot '{snap}' is {state}.", "INVALID_SNAPSHOT_ID")
            s.blocks[idx] = digest.hex()
            self.puts.append((snap, idx))
        return 201, {"x-amz-Checksum": checksum, "x-amz-Checksum-Algorithm": "SHA256",
                     "Content-Type": "application/json"}, b"{}"

    def _path(self, hexdigest: str) -> Path:
        d = self.workdir / "blocks" / hexdigest[:2]
        d.mkdir(exist_ok=True)
        return d / hexdigest

    def _CompleteSnapshot(self, snap, *, query, headers, body):
        s = self._snap(snap, None)
        if s.completes_at is not None:    # again (a retry whose first answer was lost)
            return 202, {"Content-Type": "application/json"}, \
                json.dumps({"Status": self.state(snap)}).encode()
        s = self._snap(snap, "pending")
        self._not_yet_writable(snap)
        count = headers.get("x-amz-ChangedBlocksCount")
        if count is None or not count.isdigit():
            raise invalid("ChangedBlocksCount is required")
        with self._lock:
            written = dict(s.blocks)
        if int(count) != len(written):
            raise invalid(f"ChangedBlocksCount {count} but {len(written)} blocks were written")
        checksum = headers.get("x-amz-Checksum")
        if checksum is not None:
            if headers.get("x-amz-Checksum-Algorithm") != "SHA256" or \
                    headers.get("x-amz-Checksum-Aggregation-Method") != "LINEAR":
                raise invalid("an aggregated checksum needs SHA256 and LINEAR")
            whole = hashlib.sha256(b"".join(bytes.fromhex(written[i]) for i in sorted(written)))
            if base64.b64encode(whole.digest()).decode() != checksum:
                raise invalid("The aggregated checksum does not match the blocks written.")
        with self._lock:
            s.completes_at = time.monotonic() + self.seal_seconds
        return 202, {"Content-Type": "application/json"}, \
            json.dumps({"Status": self.state(snap)}).encode()

    def _chain(self, s: Snap) -> list[Snap]:
        chain = [s]
        while chain[-1].parent and chain[-1].parent in self.snaps:
            chain.append(self.snaps[chain[-1].parent])
        return chain

    def _view(self, s: Snap) -> dict[int, tuple[str, str]]:
        """Index -> (the snapshot that wrote it, its hash): what a volume made of ``s`` holds."""
        view: dict[int, tuple[str, str]] = {}
        for link in reversed(self._chain(s)):
            view.update({i: (link.id, h) for i, h in link.blocks.items()})
        return view

    def _token(self, snap: str, idx: int) -> str:
        token = base64.b64encode(uuid.uuid4().bytes + idx.to_bytes(8, "big")).decode()
        self._tokens[token] = (snap, idx, time.time() + 7 * 86400)
        return token

    def _page(self, query, key: str, indexes: list[int]) -> tuple[list[int], str | None]:
        try:
            size = max(100, min(10000, int(query.get("maxResults", 10000))))
            start = int(query.get("startingBlockIndex", 0))
        except ValueError:
            raise invalid("MaxResults and StartingBlockIndex are numbers") from None
        token = query.get("pageToken")
        if token:      # NextToken wins over StartingBlockIndex (EBS direct APIs FAQ)
            seen = self._pages.pop(token, None)
            if seen is None or seen[0] != key or time.time() > seen[2]:
                raise invalid("The pagination token is not valid.", "INVALID_PAGE_TOKEN")
            start = seen[1]
        chosen = [i for i in indexes if i >= start][:size + 1]
        if len(chosen) <= size:
            return chosen, None
        token = uuid.uuid4().hex
        self._pages[token] = (key, chosen[size], time.time() + 3600)
        return chosen[:size], token

    def _answer(self, s: Snap, field: str, items: list, next_token: str | None) -> bytes:
        out = {field: items, "ExpiryTime": time.time() + 7 * 86400,
               "VolumeSize": s.volume_size, "BlockSize": BLOCK_SIZE}
        if next_token:
            out["NextToken"] = next_token
        return json.dumps(out).encode()

    def _ListSnapshotBlocks(self, snap, *, query, headers, body):
        with self._lock:
            s = self._snap(snap)
            view = self._view(s)
            chosen, nxt = self._page(query, f"blocks:{snap}", sorted(view))
            items = [{"BlockIndex": i, "BlockToken": self._token(snap, i)} for i in chosen]
        return 200, {"Content-Type": "application/json"}, self._answer(s, "Blocks", items, nxt)

    def _ListChangedBlocks(self, second, *, query, headers, body):
        first = query.get("firstSnapshotId")
        with self._lock:
            s2 = self._snap(second)
            v2 = self._view(s2)
            if first:
                s1 = self._snap(first)
                if s1 not in self._chain(s2) and s2 not in self._chain(s1):
                    raise invalid(f"{first} and {second} are not of one lineage",
                                  "UNRELATED_SNAPSHOTS")
                v1 = self._view(s1)
                indexes = sorted(i for i in set(v1) | set(v2) if v1.get(i) != v2.get(i))
            else:
                v1, indexes = {}, sorted(v2)
            chosen, nxt = self._page(query, f"changed:{first}:{second}", indexes)
            items = []
            for i in chosen:
                item = {"BlockIndex": i}
                if i in v1:
                    item["FirstBlockToken"] = self._token(first, i)
                if i in v2:
                    item["SecondBlockToken"] = self._token(second, i)
                items.append(item)
        return 200, {"Content-Type": "application/json"}, self._answer(s2, "ChangedBlocks",
                                                                       items, nxt)

    def _GetSnapshotBlock(self, snap, index, *, query, headers, body):
        with self._lock:
            s = self._snap(snap)
            seen = self._tokens.get(query.get("blockToken", ""))
            if seen is None or seen[0] != snap or str(seen[1]) != index or time.time() > seen[2]:
                raise invalid("The block token is not valid for this block.",
                              "INVALID_BLOCK_TOKEN")
            writer = self._view(s).get(seen[1])
        if writer is None:
            raise invalid(f"block {index} holds no data", "INVALID_BLOCK")
        data = self._path(writer[1]).read_bytes()
        return 200, {"Content-Type": "application/octet-stream",
                     "x-amz-Data-Length": str(len(data)),
                     "x-amz-Checksum": base64.b64encode(bytes.fromhex(writer[1])).decode(),
                     "x-amz-Checksum-Algorithm": "SHA256"}, data

    # -- the EC2 side ----------------------------------------------------------------------

    def _statuses(self, params, text):
        root = ET.fromstring(text)
        if root.tag.startswith("{"):
            ET.register_namespace("", root.tag[1:].split("}", 1)[0])
        changed = False
        for item in root.iter():
            fields = {el.tag.split("}")[-1]: el for el in item}
            state = self.state(fields["snapshotId"].text or "") if "snapshotId" in fields else None
            if state is not None and state != "completed" and "status" in fields:
                fields["status"].text = state
                if "progress" in fields:
                    fields["progress"].text = "0%"
                changed = True
        return ET.tostring(root, encoding="unicode") if changed else None

    def _register_needs_completed(self, params):
        for key, snap in params.items():
            if key.startswith("BlockDeviceMapping.") and key.endswith(".Ebs.SnapshotId"):
                state = self.state(snap)
                if state not in (None, "completed"):
                    raise ApiError("IncorrectState", f"Snapshot '{snap}' is not 'completed'.")

    def _deleted(self, params, text):
        with self._lock:
            self.snaps.pop(params.get("SnapshotId", ""), None)

    def blocks_of(self, snap: str) -> dict[int, str]:
        """Index -> SHA-256 hex of every block a volume made of ``snap`` holds (parents too)."""
        with self._lock:
            return {i: h for i, (_, h) in self._view(self.snaps[snap]).items()}
