"""A tiny in-memory target: images and machines are dicts of files, commands are pretend.

The fake understands exactly what the engine sends (``amic install`` of the
uploaded stage2, ``amic init <svc>``, the finishing commands) and runs an
INIT's lines with a toy interpreter that knows ``echo WORDS [> PATH]``,
``sleep N``, ``exit N`` and ``test A = B`` (``$NAME``, ``${NAME}`` and
``${NAME#prefix}`` expanded from the command's environment), so the contract
suite (``tests/targets/test_contract.py``) can check what a layer wrote and
that an ARG value never reached a disk, without running anything on the host.

Knobs for the engine's unit tests: ``fail_in`` / ``interrupt_in`` make the init
of that service fail with a canned report / raise KeyboardInterrupt; ``events``
and ``commands`` record what the engine asked for.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import tarfile
import time
from pathlib import Path

from amic.contract import MARK_VAR, STATE_DIR, TAG_KIND, TAG_SERVICE, UPLOAD_PATH, own_prefix
from amic.targets.base import Image, Machine, Target

STAGE2 = f"{STATE_DIR}/stage2"
# The chain a-b-c the engine's unit tests build on the fake (test_engine.py and
# test_engine_checkpoint_fill.py): b has an UPDATE, c a heredoc INIT, and an ARG.
AMIFILE = """\
FROM debian:12
ARG TOKEN=dflt
SERVICE a
    PACKAGES jq
    INIT echo a
SERVICE b
    REQUIRES a
    INIT echo b
    UPDATE echo update-b
SERVICE c
    REQUIRES b
    INIT <<~EOF
        echo c
    EOF
"""

_EXPAND = re.compile(r"\$\{(\w+)(?:#([^}]*))?\}|\$(\w+)")


class FakeMachine(Machine):
    def __init__(self, target: FakeTarget, image: Image) -> None:
        self.target = target
        self.image = image
        self.files: dict[str, bytes] = dict(target.disks.get(image.id, {}))
        """This machine's disk: absolute path -> content."""

    def run(self, command, *, env=None, on_output=None, timeout=None):
        t = self.target
        t.commands.append((command, dict(env or {})))
        on_output = on_output or (lambda line: None)
        if "amic install" in command and UPLOAD_PATH in self.files:
            self.install()
        m = re.search(r"amic init (\S+)", command)
        if m:
            svc = m[1]
            if svc == t.interrupt_in:
                raise KeyboardInterrupt
            own = own_prefix((env or {}).get(MARK_VAR))    # as the runner marks its lines
            on_output(f"{own}{svc}: init: begin")
            on_output(f"{svc} says hello")
            if svc == t.fail_in:
                on_output(f"{svc} is broken")
                on_output(f"{own}{svc}: init: FAILED exit 3 at Amifile:8")
                return 1
            failed = self.init(svc, dict(env or {}), on_output)
            if failed:
                on_output(f"{own}{svc}: init: FAILED exit {failed[0]} at {failed[1]}")
                return 1
            on_output(f"{own}{svc}: init: ok 0s")
        return 0

    def put(self, local, remote, *, mode=0o600):
        self.files[remote] = Path(local).read_bytes()
        self.target.events.append(f"put {remote}")

    def describe(self):
        return "ssh fake-machine"

    # what the runner would do ---------------------------------------------------------

    def install(self) -> None:
        """Unpack the uploaded stage2 where the runner keeps it; the upload goes away."""
        with tarfile.open(fileobj=io.BytesIO(self.files.pop(UPLOAD_PATH))) as tar:
            for member in tar.getmembers():
                if member.isfile():
                    rel = member.name.removeprefix("stage2/")
                    self.files[f"{STAGE2}/{rel}"] = tar.extractfile(member).read()

    def init(self, svc: str, env: dict[str, str], on_output) -> tuple[int, str] | None:
        """Run the service's INIT scripts; (exit code, Amifile location) if one failed."""
        meta_text = self.files.get(f"{STAGE2}/services/{svc}/meta")
        if meta_text is None:
            return None
        meta = {k: shlex.split(v)[0] if v else "" for k, _, v in
                (line.partition("=") for line in meta_text.decode().splitlines()) if k}
        for n in meta.get("SERVICE_INIT_SCRIPTS", "").split():
            script = self.files[f"{STAGE2}/services/{svc}/init/{n}.sh"].decode()
            self.marked_line = None
            code = self.interpret(script, env, on_output)
            if code:
                where = meta[f"SERVICE_INIT_{n}_SOURCE"]
                # as the runner does: the line the script's last marker named (compile/linemap.py)
                if self.marked_line:
                    where = f"{where.rpartition(':')[0]}:{self.marked_line}"
                return code, where
        return None

    def interpret(self, script: str, env: dict[str, str], on_output) -> int:
        def expand(word: str) -> str:
            def one(m: re.Match) -> str:
                value = env.get(m[1] or m[3], "")
                return value.removeprefix(m[2]) if m[2] is not None else value
            return _EXPAND.sub(one, word)

        for line in script.splitlines():
            words = [expand(w) for w in shlex.split(line, comments=True)]
            if not words:
                continue
            if words[0] == "__amic_at":
                self.marked_line = words[1]
            elif words[0] == "echo" and ">" in words:
                i = words.index(">")
                self.files[words[i + 1]] = (" ".join(words[1:i]) + "\n").encode()
            elif words[0] == "echo":
                on_output(" ".join(words[1:]))
            elif words[0] == "sleep":
                time.sleep(float(words[1]))
            elif words[0] == "exit":
                return int(words[1])
            elif words[0] == "test" and words[2:3] == ["="] and words[1] != words[3]:
                return 1
        return 0


class FakeTarget(Target):
    name = "fake"
    default_checkpoint = "all"
    snapshot_seconds = 1000.0

    def __init__(self) -> None:
        self.images: dict[str, Image] = {}
        self.disks: dict[str, dict[str, bytes]] = {"base-1": {}}
        """image id -> its files; ``machines`` holds the disks of running machines."""
        self.machines: list[FakeMachine] = []
        self.events: list[str] = []
        self.commands: list[tuple[str, dict]] = []
        self.fail_in: str | None = None
        self.interrupt_in: str | None = None
        self.counter = 0

    def resolve_base(self, base_ref):
        return Image(id="base-1", tags={TAG_KIND: "base"})

    def find_image(self, key):
        return self.images.get(key)

    @contextlib.contextmanager
    def launch(self, image, *, build_id):
        self.events.append(f"launch {image.id}")
        machine = FakeMachine(self, image)
        self.machines.append(machine)
        try:
            yield machine
        except BaseException:
            if not self.keep_on_error:
                self.machines.remove(machine)
            self.events.append("release (error)" if not self.keep_on_error else "kept")
            raise
        self.machines.remove(machine)
        self.events.append("release")

    def snapshot(self, machine, *, key, final, tags):
        self.counter += 1
        img = Image(id=f"img-{self.counter}", key=key, tags=tags, created=f"{self.counter:04d}")
        self.images[key] = img
        self.disks[img.id] = dict(machine.files)
        self.events.append(f"snapshot {'final' if final else tags[TAG_SERVICE]}")
        return img

    def list_images(self):
        return iter(list(self.images.values()))

