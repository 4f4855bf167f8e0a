"""What the lint checks share: command classification, script walking, secret patterns."""

from __future__ import annotations

import re
from collections.abc import Iterator

from amic.amifile import ir
from amic.errors import Pos
from amic.lint.model import Context, ScriptRef
from amic.lint.shell import Command, ScriptMap

Found = Iterator[tuple[Pos, str]]

# --------------------------------------------------------------------------- helpers

PACKAGE_MANAGERS = {"apt-get", "apt", "aptitude", "yum", "dnf", "microdnf", "zypper", "apk",
                    "dpkg", "rpm"}
INSTALL_VERBS = {
    "apt-get": {"install", "reinstall"}, "apt": {"install", "reinstall"},
    "aptitude": {"install", "reinstall"},
    "yum": {"install", "reinstall", "localinstall", "groupinstall"},
    "dnf": {"install", "reinstall", "localinstall", "groupinstall"},
    "microdnf": {"install", "reinstall"},
    "zypper": {"install", "in"}, "apk": {"add"},
}
UPGRADE_VERBS = {
    "apt-get": {"upgrade", "dist-upgrade", "full-upgrade"},
    "apt": {"upgrade", "dist-upgrade", "full-upgrade"},
    "aptitude": {"upgrade", "safe-upgrade", "full-upgrade", "dist-upgrade"},
    "yum": {"update", "upgrade", "distro-sync"}, "dnf": {"update", "upgrade", "distro-sync"},
    "microdnf": {"update", "upgrade"},
    "zypper": {"update", "up", "dist-upgrade", "dup"}, "apk": {"upgrade"},
}
_APT_ARG_OPTIONS = frozenset({"-o", "-c", "-t", "--option", "--config-file",
                              "--target-release"})
_YES_FLAGS = {"-y", "--yes", "--assume-yes", "--non-interactive", "-n", "--no-confirm",
              "--force-yes", "--noninteractive"}
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "ash", "busybox"}
DOWNLOADERS = {"curl", "wget", "fetch"}
INTERPRETERS = SHELLS | {"python", "python3", "perl", "ruby", "node"}
SUBST_PIPE_RE = re.compile(
    r"\b(?:sh|bash|dash|zsh|ksh)\b[^\n;&|]*(?:\$\(|<\(|`)\s*(?:curl|wget)\b")


def verb_of(cmd: Command) -> str | None:
    return cmd.verb(_APT_ARG_OPTIONS if cmd.name.startswith("apt") else frozenset())


def is_install(cmd: Command) -> bool:
    """Does this command install OS packages?"""
    if cmd.name in ("dpkg", "rpm"):
        return any(a in ("-i", "--install", "-U", "--upgrade", "-ivh", "-Uvh") for a in cmd.args)
    return verb_of(cmd) in INSTALL_VERBS.get(cmd.name, ())


def is_upgrade(cmd: Command) -> bool:
    """Does this command upgrade every installed package?"""
    verb = verb_of(cmd)
    if verb not in UPGRADE_VERBS.get(cmd.name, ()):
        return False
    if cmd.name in ("yum", "dnf", "microdnf", "zypper"):
        # ``yum update foo`` updates one package; only a bare update upgrades everything.
        after = cmd.args[cmd.args.index(verb) + 1:]
        return not [a for a in after if not a.startswith("-")]
    return True


def is_noninteractive(cmd: Command) -> bool:
    if cmd.name in ("apk", "dpkg", "rpm"):
        return True
    for arg in cmd.args:
        if arg in _YES_FLAGS or arg.startswith("--assumeyes"):
            return True
        if re.fullmatch(r"-[a-zA-Z]*y[a-zA-Z]*", arg) and cmd.name != "zypper":
            return True  # -qy, -yq
        if re.fullmatch(r"-[a-zA-Z]*n[a-zA-Z]*", arg) and cmd.name == "zypper":
            return True
        if "Assume-Yes" in arg or "assumeyes" in arg:
            return True
    return False


def script_commands(ctx: Context, ref: ScriptRef) -> Iterator[tuple[Command, ScriptMap]]:
    """The commands of a script (split once per lint, shared by every rule) and its map."""
    smap = ctx.script_map(ref.script)
    for cmd in ctx.commands(ref.script):
        yield cmd, smap


def at(smap: ScriptMap, word) -> Pos:
    return smap.pos(word.index, word.col)


def scripts(ctx: Context, phase: str | None = None) -> Iterator[ScriptRef]:
    return (ref for ref in ctx.scripts() if phase is None or ref.phase == phase)


def find_word(ctx: Context, start: Pos, keyword: str, word: str, stop: int | None,
               nth: int = 1) -> Pos:
    """Position of the ``nth`` ``word`` on ``keyword`` lines between ``start`` and ``stop``
    (the IR keeps no positions for package names); ``start`` when not found."""
    lines = ctx.lines
    end = min(stop or len(lines), len(lines))
    pattern = re.compile(r"(?<![\w.+-])" + re.escape(word) + r"(?![\w.+-])")
    in_keyword = False
    for line in range(start.line, end + 1):
        text = lines[line - 1]
        head = text.split(None, 1)[0] if text.strip() else ""
        skip = 0
        if head.upper() == keyword:
            in_keyword, skip = True, text.index(head) + len(head)
        if not in_keyword:
            continue
        for match in pattern.finditer(text, skip):
            nth -= 1
            if nth == 0:
                return Pos(start.file, line, match.start() + 1)
        in_keyword = text.rstrip().endswith("\\")
    return start


def service_end(ctx: Context, svc: ir.Service) -> int | None:
    return ctx.service_end(svc)


# --------------------------------------------------------------------------- secrets

_TOKEN_PATTERNS = [
    (re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"-----BEGIN (?:[A-Z]+ )*PRIVATE KEY(?: BLOCK)?-----"), "a private key"),
    (re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"), "a GitHub token"),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), "a Slack token"),
    (re.compile(r"(?i)\baws_secret_access_key\b\s*[=:]\s*['\"]?(?![$<{])[A-Za-z0-9/+]{20,}"),
     "an AWS secret access key"),
]
_ASSIGNED_SECRET_RE = re.compile(
    r"(?i)(?<![\w-])(?:--)?([\w-]*(?:password|passwd|secret|token|api[_-]?key))\s*[=:]\s*"
    r"(['\"]?)(?![$<{%(])([^\s'\"]{4,})\2")
SECRET_NAME_RE = re.compile(
    r"(?i)(?:^|_)(?:password|passwd|pass|secret|token|api_?key|secret_?key|private_?key"
    r"|access_?key|credentials?)$")
"""Variable names whose value is a secret: the last ``_``-separated part says so
(``DB_PASSWORD``, ``GITHUB_TOKEN``; not ``BYPASS`` or ``PWD``)."""
_PLACEHOLDERS = re.compile(r"(?i)^(?:x+|\*+|changeme|change-me|none|null|example\w*|dummy"
                           r"|placeholder|redacted|your[_-]\w+|<.*>)$")


def secret_in(text: str) -> str | None:
    """What kind of credential ``text`` appears to contain, or ``None``."""
    for pattern, what in _TOKEN_PATTERNS:
        if pattern.search(text):
            return what
    match = _ASSIGNED_SECRET_RE.search(text)
    if match and not _PLACEHOLDERS.match(match.group(3)):
        return f"a literal {match.group(1).lower()}"
    return None


def literal(value: str) -> bool:
    """A value that is not a reference to a variable and not a placeholder."""
    value = value.strip().strip("'\"")
    return bool(value) and not value.startswith("$") and not _PLACEHOLDERS.match(value)
