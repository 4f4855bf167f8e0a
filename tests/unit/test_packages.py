"""PACKAGES names: what each manager accepts, refused at the word's own position."""

from __future__ import annotations

import pytest

from amic.amifile.packages import problem, split_prefix


@pytest.mark.parametrize("word", [
    "curl", "g++", "libstdc++6", "python3.11", "NetworkManager", "libc6:i386", "foo=1.2-3",
    "foo=1:2.3-4", "nginx/bookworm-backports", "apt:libc6:i386", "apt:nginx=1.24.0-1~bpo12+1",
    "apt:nginx/bookworm-backports", "apt:libc6:amd64=2.36-9", "rpm:httpd", "rpm:NetworkManager",
    "rpm:foo-1.2-3.fc39.x86_64", "rpm:bash-0:5.2.26-3.fc40", "rpm:vim-enhanced.x86_64",
    "dnf:vim-enhanced", "yum:httpd-tools", "zypper:apache2", "rpm:pkg-1.0~rc1-1",
    "apk:busybox=1.36.1-r2", "apk:nginx@edge", "apk:curl>=8.5", "apk:py3-pip~23",
    "apk:musl_dev", "deb:foo",   # `deb` is no prefix: the package deb for architecture foo
])
def test_accepted(word):
    assert problem(word) is None


@pytest.mark.parametrize("word,needle", [
    ("*", "contains '*': package names take no glob patterns"),
    ("lib*", "glob"), ("foo?", "glob"), ("[ab]", "glob"), ("apt:lib[ab]", "glob"),
    ("a b", "contains whitespace; write each package as its own word"),
    ("a\tb", "whitespace"),
    ("-s", "starts with '-': the package manager would take it as an option"),
    ("--simulate", "option"), ("apt:-s", "option"), ("rpm:--nogpgcheck", "option"),
    ("foo\0bar", "contains a NUL byte"),
    ("foo\x1bbar", "control character"),
    ("apt:", "'apt:' names no package"),
    ("apt:Foo", "apt: 'Foo' is not a package name: expected NAME[:ARCH]"),
    ("apt:a", "apt: 'a' is not a package name"),               # Debian Policy: two or more
    ("rpm:foo:i386", "rpm: 'foo:i386' is not a package name"),   # rpm's arch is `.arch`
    ("apk:Foo", "apk: 'Foo' is not a package name"),
    ("foo$(id)", "is not a package name"), ("foo;rm", "is not a package name"),
    ("'q'", "is not a package name"), ("foo=", "is not a package name"),
    ("libc6:i386:amd64", "is not a package name"), ("x" * 300, "longer than 256"),
    ("_private", "is not a package name"), (".hidden", "is not a package name"),
    # apt-get's action suffixes: `install NAME-` removes, `install NAME_` purges (issue 18)
    ("hello-", "ends with '-': apt-get would remove the package"),
    ("ca-certificates-", "apt-get would remove"), ("hello_", "apt-get would purge"),
    ("apt:hello-", "would remove"), ("foo=1.0-1-", "would remove"),
    ("nginx/bookworm-", "would remove"), ("rpm:foo-", "rpm: 'foo-' ends with '-'"),
    ("apk:musl_", "apk: 'musl_' ends with '_'"),
    ("apt:apt:hello", "has two manager prefixes"), ("apt:rpm:x", "two manager prefixes"),
])
def test_refused(word, needle):
    why = problem(word)
    assert why is not None and needle in why, why


def test_only_known_prefixes_are_prefixes():
    assert split_prefix("libc6:i386") == (None, "libc6:i386")
    assert split_prefix("apt:libc6:i386") == ("apt", "libc6:i386")
    assert split_prefix("zypper:apache2") == ("zypper", "apache2")
    assert split_prefix("foo=1:2.3") == (None, "foo=1:2.3")


def test_bad_name_is_an_error_at_its_word(tmp_path, amic_cli):
    (tmp_path / "Amifile").write_text(
        "SERVICE a\n    PACKAGES curl\n\n"
        "SERVICE web\n    PACKAGES curl jq\n    PACKAGES nginx \\\n        \"*\" vim\n")
    proc = amic_cli("compile", "-o", "out.tar", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == ("Amifile:7:9: package name '*' contains '*': package names take no "
                        "glob patterns"), proc.stderr
    assert lines[1:3] == ['            "*" vim', "    " + " " * 8 + "^"]
    assert not (tmp_path / "out.tar").exists()


@pytest.mark.parametrize("words,col,needle", [
    ("-s hello", 14, "'-s' starts with '-'"),
    ("hello 'a b'", 20, "'a b' contains whitespace"),
    ("apt:curl rpm:x:y", 23, "rpm: 'x:y' is not a package name"),
    ("curl ca-certificates-", 19, "'ca-certificates-' ends with '-': apt-get would remove"),
    ("hello_", 14, "'hello_' ends with '_': apt-get would purge"),
    ("apt:apt:hello", 14, "'apt:apt:hello' has two manager prefixes"),
])
def test_refused_through_compile(tmp_path, amic_cli, words, col, needle):
    (tmp_path / "Amifile").write_text(f"SERVICE s\n    PACKAGES {words}\n")
    proc = amic_cli("compile", "-o", "out.tar", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"Amifile:2:{col}: "), proc.stderr
    assert needle in proc.stderr.splitlines()[0]


def test_nul_in_a_package_name_is_refused(tmp_path, amic_cli):
    (tmp_path / "Amifile").write_bytes(b"SERVICE s\n    PACKAGES foo\0bar\n")
    proc = amic_cli("compile", "-o", "out.tar", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("Amifile:2:17: NUL byte"), proc.stderr


def test_accepted_names_reach_the_packages_file_as_written(tmp_path, amic_cli):
    import io
    import tarfile

    (tmp_path / "Amifile").write_text(
        "SERVICE s\n    PACKAGES libc6:i386 apt:libc6:i386 foo=1.2-3 rpm:httpd apk:curl>=8\n")
    amic_cli("compile", "-o", "out.tar", cwd=tmp_path, check=True)
    with tarfile.open(fileobj=io.BytesIO((tmp_path / "out.tar").read_bytes())) as tar:
        listing = tar.extractfile("stage2/services/s/packages").read().decode()
    assert listing.splitlines() == ["apk:curl>=8", "apt:libc6:i386", "foo=1.2-3", "libc6:i386",
                                    "rpm:httpd"]
