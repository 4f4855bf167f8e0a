"""A kept disk brought from one image to the next through only the paths their layers name.

Real overlay mounts of hand-made layers (a shared bottom layer, the old image's own layer,
the new one's) and real ``rsync``, as ``reuse-root.sh`` runs them (``sync-root.sh``):
the tree the delta makes is the tree a full ``rsync`` makes, checksum for checksum, for
files changed, added, deleted by whiteout, a whole directory deleted, a directory coming
back from a lower layer, a link turned directory and back, opaque directories (made anew
over a deleted one) in either image, hard links and xattrs. And the
hostile cases a full walk never met: an image that turns a directory the disk holds into
a link to a host directory, or whose disk holds a link where the new image has a
directory, has nothing of the host read into the disk or deleted through it.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from amic.targets.ec2 import disk_delta, disk_reuse
from amic.targets.scripts import script

pytestmark = pytest.mark.root

SYNC = script("amic.targets.local", "sync-root.sh")


def put(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


def whiteout(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(0, 0))


@pytest.fixture
def layers(tmp_path):
    """base (shared), old's own layer, new's own layer; host directories as canaries."""
    host = tmp_path / "host"
    put(host / "read-me" / "f", "HOST-SECRET")
    put(host / "keep-me" / "c", "HOST-FILE")
    base, old, new = (tmp_path / n for n in ("base", "old", "new"))
    put(base / "etc/a", "a0")
    put(base / "etc/keep", "keep")
    os.setxattr(base / "etc/keep", "user.amic", b"kept")
    put(base / "d/x", "x")
    put(base / "d/y", "y")
    put(base / "q/c", "base-c")
    put(base / "usr/bin/tool", "tool", 0o755)
    put(base / "h1", "linked")
    os.link(base / "h1", base / "h2")
    os.symlink("usr/bin/tool", base / "lnk")
    # the old image: a file changed, one deleted, a directory of its own, a link to the
    # host where the base has a directory (so the kept disk holds that link)
    put(old / "etc/a", "a-old")
    whiteout(old / "d/y")
    put(old / "nd/f", "nd-f")
    put(old / "gone", "g")
    os.symlink(str(host / "keep-me"), old / "q")
    put(base / "o/a", "oa")                      # o made anew by the old image: opaque
    put(old / "o/mine", "mine")
    os.setxattr(old / "o", "trusted.overlay.opaque", b"y")
    # the new image: another change, the whole of d deleted, the old one's directory
    # turned into a link to the host, q a directory again with one file removed, a new
    # directory, a hard-linked pair and an xattr of its own
    put(new / "etc/a", "a-new")
    whiteout(new / "d")
    os.symlink(str(host / "read-me"), new / "nd")
    whiteout(new / "q/c")
    put(new / "q/n2", "n2")
    put(new / "s/t", "t")
    put(new / "s/u/v", "v", 0o600)
    put(new / "p1", "pair")
    os.link(new / "p1", new / "p2")
    put(new / "etc/cap", "cap")
    os.setxattr(new / "etc/cap", "user.k", b"2")
    put(base / "o2/a", "o2a")                    # and o2 by the new one
    put(base / "o2/sub/b", "o2b")
    put(new / "o2/c", "o2c")
    os.setxattr(new / "o2", "trusted.overlay.opaque", b"y")
    # the layers were written at different times, as builds are
    for stamp, layer in ((1_600_000_000, old), (1_700_000_000, new)):
        for path in layer.rglob("*"):
            os.utime(path, (stamp, stamp), follow_symlinks=False)
    # but the stage2's files all have the time 0 (a reproducible tarball): a script of
    # the same size changed between the images looks unchanged to size and time alone
    for text, layer in (("echo one", old), ("echo two", new)):
        os.utime(put(layer / "var/lib/amic/stage2/init", text), (0, 0))
    return tmp_path


def run_ns(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    sh = "set -eu\n" + SYNC + body
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", sh,
                           "test", str(tmp_path), sys.executable, disk_delta.__file__],
                          capture_output=True, text=True, timeout=120)


SETUP = """
t=$1 python=$2 filter=$3
cd "$t"
mkdir -p oldm newm work upper full delta
mount -t overlay overlay -o "lowerdir=$t/old:$t/base" oldm
sync_root "$t/oldm" "$t/full" "" "" "$python" "$filter"
sync_root "$t/oldm" "$t/delta" "" "" "$python" "$filter"
mount -t overlay overlay -o "lowerdir=$t/new:$t/base,upperdir=$t/upper,workdir=$t/work" newm
echo "UUID=x / ext4 defaults 0 1" > newm/etc/fstab   # the disk's own file, in its upper
"""


def test_the_delta_makes_the_tree_a_full_rsync_makes_and_reaches_no_host_file(layers):
    t = layers
    paths = disk_delta.changed_paths([t / "old", t / "base"], [t / "new", t / "base"])
    assert paths is not None and "etc/a" in paths and "usr/bin/tool" not in paths
    (t / "list").write_bytes(b"".join(os.fsencode(p) + b"\0" for p in paths))
    proc = run_ns(t, SETUP + """
echo planted > delta/extra          # outside every layer: only a full walk removes it
sync_root "$t/newm" "$t/full" "$t/upper" "" "$python" "$filter"
sync_root "$t/newm" "$t/delta" "$t/upper" "$t/list" "$python" "$filter"
""")
    assert proc.returncode == 0, proc.stderr
    # the delta touched only the listed paths (the planted file outlived it), and the
    # host's directories are as they were
    assert (t / "delta/extra").read_text() == "planted\n"
    synced = os.stat(t / "delta")
    (t / "delta/extra").unlink()           # the root's time as the sync left it, not now
    os.utime(t / "delta", ns=(synced.st_atime_ns, synced.st_mtime_ns))
    assert (t / "host/keep-me/c").read_text() == "HOST-FILE"
    assert (t / "host/read-me/f").read_text() == "HOST-SECRET"
    for tree in (t / "full", t / "delta"):
        assert (tree / "nd").is_symlink() and (tree / "q").is_dir() \
            and not (tree / "q").is_symlink()
        assert not (tree / "d").exists() and not (tree / "q/c").exists()
        assert (tree / "etc/a").read_text() == "a-new" and (tree / "s/u/v").read_text() == "v"
        assert os.stat(tree / "p1").st_ino == os.stat(tree / "p2").st_ino
        assert os.getxattr(tree / "etc/cap", "user.k") == b"2"
        assert (tree / "var/lib/amic/stage2/init").read_text() == "echo two"
        assert sorted(p.name for p in (tree / "o").iterdir()) == ["a"]
        assert sorted(p.name for p in (tree / "o2").iterdir()) == ["c"]
        assert b"HOST-SECRET" not in b"".join(
            p.read_bytes() for p in tree.rglob("*") if p.is_file() and not p.is_symlink())
    same = subprocess.run(["rsync", "-n", "-aHAXci", "--numeric-ids", "--delete",
                           f"{t}/full/", f"{t}/delta/"], capture_output=True, text=True)
    assert same.returncode == 0 and same.stdout == "", same.stdout


def test_unfiltered_the_listed_paths_would_reach_the_host(layers):
    """The filter is what stands between the list and the host: the same list handed to
    ``rsync --files-from`` as it is copies the host's file into the disk."""
    t = layers
    paths = disk_delta.changed_paths([t / "old", t / "base"], [t / "new", t / "base"])
    (t / "list").write_bytes(b"".join(os.fsencode(p) + b"\0" for p in [".", *paths]))
    proc = run_ns(t, SETUP + """
rsync -aHAX --numeric-ids --inplace --from0 --files-from="$t/list" \
    --delete-missing-args --force "$t/newm/" "$t/delta/" || true
""")
    assert proc.returncode == 0, proc.stderr
    deleted = not (t / "host/keep-me/c").exists()
    read = any(p.is_file() and not p.is_symlink() and b"HOST-SECRET" in p.read_bytes()
               for p in (t / "delta").rglob("*"))
    assert deleted or read


def test_an_opaque_directory_is_a_subtree_and_what_no_path_names_is_not_followed(tmp_path):
    base, old, new = (tmp_path / n for n in ("base", "old", "new"))
    put(base / "d/x", "x")
    put(old / "etc/a", "a")
    put(new / "d/y", "y")
    assert disk_delta.changed_paths([old, base], [new, base]) == ["d", "d/y", "etc", "etc/a"]
    os.setxattr(new / "d", "trusted.overlay.opaque", b"y")
    assert "d/" in disk_delta.changed_paths([old, base], [new, base])
    os.setxattr(old / "etc/a", "user.overlay.metacopy", b"")
    assert disk_delta.changed_paths([old, base], [new, base]) is None
    assert disk_delta.changed_paths([old], [new]) is None      # no shared bottom layer
    # the disk's own layer with a redirected directory: the script says "cannot tell" (3)
    upper = tmp_path / "upper"
    (upper / "boot").mkdir(parents=True)
    os.setxattr(upper / "boot", "trusted.overlay.redirect", b"/grub")
    (tmp_path / "list").write_bytes(b"")
    assert disk_delta.main([str(base), str(tmp_path), str(upper), str(tmp_path / "list"),
                            str(tmp_path / "out")]) == disk_delta.CANNOT_TELL


def test_kept_facts_name_their_disk_or_nothing_is_trusted(tmp_path):
    """The facts say which image the kept disk holds only for the file they were written
    with; a disk written after them, or a name that is no image id, is walked whole."""
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * 4096)
    kept = tmp_path / "kept"

    class Untouched:
        def use(self, image_id):
            raise AssertionError(f"the facts were trusted for {image_id}")

    disk_reuse.keep(kept, raw, {"uuid": "u", "root_mib": 1, "image": "a" * 64})
    facts = json.loads((kept / "disk.json").read_text())
    assert facts["stamp"][0] == os.stat(raw).st_ino
    with open(kept / "disk.raw", "r+b") as fh:          # written after its facts
        fh.write(b"x")
    assert disk_reuse.delta_since(Untouched(), facts, kept / "disk.raw", []) is None
    disk_reuse.keep(kept, raw, {**facts, "image": "../../etc"})
    facts = json.loads((kept / "disk.json").read_text())
    assert disk_reuse.delta_since(Untouched(), facts, kept / "disk.raw", []) is None
