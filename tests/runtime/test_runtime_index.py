"""Services with no directory in the stage2 (issue 18): the runner finds them in its index.

A service with nothing for the runner to do but record its init (no packages of its own,
COPY, INIT or UPDATE) is a line of ``stage2/index``, not a directory; a service with a
directory has no empty files. The runner's behaviour must not change for either: init
records with the service's hash and layer key, ordering by REQUIRES, skips, update
results, status, boot-time requests; and a stage2 that gives a service a directory
installed over one that did not (and back) leaves nothing stale behind. Real compiler
output in a chroot of the cached Debian base, under dash, busybox sh and bash --posix.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.harness.roots import RUNNER, SHELLS, Root, compile_stage2, markers

AMIFILE = """\
ENABLE top

SERVICE bare

SERVICE esac

SERVICE mid
    REQUIRES bare esac

SERVICE top
    REQUIRES mid
    INIT echo "init top" >> /root/order
    UPDATE echo "update top" >> /root/order

SERVICE later
    REQUIRES top
"""


def plan_json(tmp_path, text: str) -> dict:
    from amic.amifile import resolve
    from amic.compile import plan

    (tmp_path / "Amifile").write_text(text)
    return plan.make_plan(resolve.load(tmp_path / "Amifile"), {}, environ={}).to_json()


@pytest.mark.root
@pytest.mark.parametrize("shell_id", ["dash", "busybox", "bash-posix"])
def test_services_in_the_index_behave_as_with_a_directory(shell_id, tmp_path) -> None:
    shell = SHELLS[shell_id]
    amic = f"{shell} {RUNNER}"
    root = Root(tmp_path / "root")
    root.put("/usr/bin/busybox", Path(shutil.which("busybox")).read_bytes(), 0o755)
    tar = compile_stage2(tmp_path / "ctx", AMIFILE)
    root.install_stage2(tar, shell)
    assert not root.exists("/var/lib/amic/stage2/services/bare")
    assert not root.exists("/var/lib/amic/stage2/services/mid")
    assert not root.exists("/var/lib/amic/stage2/services/top/packages")
    doc = plan_json(tmp_path / "ctx", AMIFILE)
    hashes = {s["name"]: s["hash"] for s in doc["services"]}
    keys = {layer["service"]: layer["key"] for layer in doc["layers"]}

    rc, out = root.run(f"{amic} init", check=None)
    assert rc == 0, out
    assert [m for m in markers(out) if m.endswith("begin")] == [
        "bare: init: begin", "esac: init: begin", "mid: init: begin", "top: init: begin"]
    for name in ("bare", "esac", "mid", "top"):
        record = root.read(f"/var/lib/amic/init/{name}")
        assert f"INIT_HASH='{hashes[name]}'" in record
        assert f"INIT_LAYER_KEY='{keys[name]}'" in record
    assert not root.exists("/var/lib/amic/init/later")
    rc, out = root.run(f"{amic} init", check=None)
    assert rc == 0 and len(markers(out)) == 4 and all("skipped (initialised" in m
                                                      for m in markers(out)), out

    # `later` requested at boot: initialised after what it requires, then every update
    root.put("/etc/amic/services", "later\n")
    rc, out = root.run(f"{amic} boot", check=None)
    assert rc == 0, out
    assert [m for m in markers(out) if "begin" in m] == ["later: init: begin",
                                                         "top: update: begin"]
    st = json.loads(root.run(f"{amic} status --json 2>/dev/null")[1].splitlines()[-1])
    by = {s["name"]: s for s in st["services"]}
    assert by["mid"]["requires"] == "bare esac" and by["mid"]["hash"] == hashes["mid"]
    assert by["later"]["init"]["state"] == "current" and by["later"]["enabled"] is True
    assert by["bare"]["update"]["result"] == "none" and by["top"]["update"]["result"] == "ok"

    # `mid` gains an INIT (a directory), then loses it again (the index): each install
    # replaces the stage2 whole, so the runner sees the meta of the stage2 installed
    with_init = AMIFILE.replace("    REQUIRES bare esac\n",
                                "    REQUIRES bare esac\n    INIT echo 'init mid' >> /root/order\n")
    root.install_stage2(compile_stage2(tmp_path / "ctx2", with_init), shell)
    assert root.exists("/var/lib/amic/stage2/services/mid/meta")
    rc, out = root.run(f"{amic} init mid", check=None)
    assert rc == 0 and "mid: init changed since" in out, out
    root.install_stage2(compile_stage2(tmp_path / "ctx3", AMIFILE), shell)
    assert not root.exists("/var/lib/amic/stage2/services/mid")
    rc, out = root.run(f"{amic} init mid", check=None)
    assert rc == 0 and "mid: init changed since" in out, out
    assert f"INIT_HASH='{hashes['mid']}'" in root.read("/var/lib/amic/init/mid")

    # a name in neither place (a stage2 edited by hand): a clear error, no shell noise
    root.run("sed -i \"/'esac')/d\" /var/lib/amic/stage2/index")
    rc, out = root.run(f"{amic} init esac", check=None)
    assert rc == 1 and "service 'esac' has neither a directory nor a line in" in out, out
