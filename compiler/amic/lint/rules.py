"""The lint rules: one check function per rule, and the :data:`RULES` table.

A check takes a :class:`~amic.lint.model.Context` and yields ``(Pos, message)``; the engine
adds the rule id and severity, applies pragmas and ``--ignore``. Ids are stable: a retired
rule's id is never reused. Ranges: AM1xxx parse/structure, AM2xxx global instructions,
AM3xxx service instructions, AM4xxx whole file. Each rule has a section in
``docs/lint-rules.md``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from amic.amifile import ir
from amic.errors import Pos
from amic.lint.model import Context, Rule, ScriptRef
from amic.lint.shell import Command, ScriptMap, commands

Found = Iterator[tuple[Pos, str]]

# --------------------------------------------------------------------------- helpers

PACKAGE_MANAGERS = {"apt-get", "apt", "aptitude", "yum", "dnf", "microdnf", "zypper", "apk",
                    "dpkg", "rpm"}
_INSTALL_VERBS = {
    "apt-get": {"install", "reinstall"}, "apt": {"install", "reinstall"},
    "aptitude": {"install", "reinstall"},
    "yum": {"install", "reinstall", "localinstall", "groupinstall"},
    "dnf": {"install", "reinstall", "localinstall", "groupinstall"},
    "microdnf": {"install", "reinstall"},
    "zypper": {"install", "in"}, "apk": {"add"},
}
_UPGRADE_VERBS = {
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
_INTERPRETERS = SHELLS | {"python", "python3", "perl", "ruby", "node"}
_SUBST_PIPE_RE = re.compile(
    r"\b(?:sh|bash|dash|zsh|ksh)\b[^\n;&|]*(?:\$\(|<\(|`)\s*(?:curl|wget)\b")


def _verb(cmd: Command) -> str | None:
    return cmd.verb(_APT_ARG_OPTIONS if cmd.name.startswith("apt") else frozenset())


def is_install(cmd: Command) -> bool:
    """Does this command install OS packages?"""
    if cmd.name in ("dpkg", "rpm"):
        return any(a in ("-i", "--install", "-U", "--upgrade", "-ivh", "-Uvh") for a in cmd.args)
    return _verb(cmd) in _INSTALL_VERBS.get(cmd.name, ())


def is_upgrade(cmd: Command) -> bool:
    """Does this command upgrade every installed package?"""
    verb = _verb(cmd)
    if verb not in _UPGRADE_VERBS.get(cmd.name, ()):
        return False
    if cmd.name in ("yum", "dnf", "microdnf", "zypper"):
        # ``yum update foo`` updates one package; only a bare update upgrades everything.
        after = cmd.args[cmd.args.index(verb) + 1:]
        return not [a for a in after if not a.startswith("-")]
    return True


def _is_noninteractive(cmd: Command) -> bool:
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


def _script_commands(ctx: Context, ref: ScriptRef) -> Iterator[tuple[Command, ScriptMap]]:
    smap = ScriptMap(ref.script, ctx.lines)
    for cmd in commands(ref.script.text):
        yield cmd, smap


def _at(smap: ScriptMap, word) -> Pos:
    return smap.pos(word.index, word.col)


def _scripts(ctx: Context, phase: str | None = None) -> Iterator[ScriptRef]:
    return (ref for ref in ctx.scripts() if phase is None or ref.phase == phase)


def _find_word(ctx: Context, start: Pos, keyword: str, word: str, stop: int | None,
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


def _service_end(ctx: Context, svc: ir.Service) -> int | None:
    later = [s.pos.line for s in ctx.amifile.services if s.pos.line > svc.pos.line]
    return min(later) - 1 if later else None


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


def _literal(value: str) -> bool:
    """A value that is not a reference to a variable and not a placeholder."""
    value = value.strip().strip("'\"")
    return bool(value) and not value.startswith("$") and not _PLACEHOLDERS.match(value)


# --------------------------------------------------------------------------- AM1xxx


def check_empty_service(ctx: Context) -> Found:
    for svc in ctx.amifile.services:
        if not (svc.requires or svc.packages or svc.copies or svc.envs or svc.inits
                or svc.updates):
            yield svc.pos, f"service {svc.name!r} is empty: it installs, copies and runs nothing"


# --------------------------------------------------------------------------- AM2xxx


def check_from_missing(ctx: Context) -> Found:
    if ctx.amifile.base is None and not ctx.fragment:
        yield Pos(ctx.path, 1, 1), ("no FROM: the build target's default base image is used, "
                                    "which can change under you; say FROM explicitly")


def check_from_latest(ctx: Context) -> Found:
    base = ctx.amifile.base
    if base is None:
        return
    ref = base.ref.strip()
    if ref.startswith("ami-") or "=" in ref:
        return  # an AMI id is pinned; a filter is explicit about what it matches
    name, _, tag = ref.rpartition(":") if ":" in ref else (ref, "", "")
    if tag == "latest":
        yield base.pos, f"FROM {ref}: ':latest' changes under you; pin a release such as {name}:12"
    elif not tag:
        yield base.pos, f"FROM {ref} has no version; pin a release such as {ref}:12"


def check_env_label_secret(ctx: Context) -> Found:
    pairs: list[tuple[str, str, str, Pos]] = []
    for env in ctx.amifile.envs + tuple(e for s in ctx.amifile.services for e in s.envs):
        pairs.append(("ENV", env.name, env.value, env.pos))
    for label in ctx.amifile.labels:
        pairs.append(("LABEL", label.key, label.value, label.pos))
    for keyword, name, value, pos in pairs:
        what = secret_in(value) or secret_in(f"{name}={value}")
        if what is None and SECRET_NAME_RE.search(name) and _literal(value):
            what = f"a literal {name.lower()}"
        if what:
            yield pos, (f"{keyword} {name} holds {what}: it is baked into the image and the "
                        "artifact; pass it as an ARG or fetch it at boot")


def check_arg_secret_default(ctx: Context) -> Found:
    for arg in ctx.amifile.args:
        if arg.default and (SECRET_NAME_RE.search(arg.name) or secret_in(arg.default)):
            if _literal(arg.default):
                yield arg.pos, (f"ARG {arg.name} has a secret-looking default committed to the "
                                "Amifile; drop the default and pass it with --build-arg or the "
                                "environment")


# --------------------------------------------------------------------------- AM3xxx


def check_update_install(ctx: Context) -> Found:
    for ref in _scripts(ctx, "update"):
        for cmd, smap in _script_commands(ctx, ref):
            if cmd.name in PACKAGE_MANAGERS and is_install(cmd):
                yield _at(smap, cmd.words[0]), (
                    f"{cmd.name} installs packages in UPDATE of {ref.service.name!r}, which runs "
                    "at every boot; use PACKAGES (or INIT) so it is baked once")


def check_init_install_yes(ctx: Context) -> Found:
    for ref in _scripts(ctx, "init"):
        for cmd, smap in _script_commands(ctx, ref):
            if cmd.name in PACKAGE_MANAGERS and is_install(cmd) and not _is_noninteractive(cmd):
                flag = "-n" if cmd.name == "zypper" else "-y"
                yield _at(smap, cmd.words[0]), (
                    f"{cmd.name} install without {flag} waits for an answer that never comes "
                    "during a bake")


def _debian_frontend_set(ctx: Context, ref: ScriptRef) -> bool:
    envs = ctx.amifile.envs + ref.service.envs
    if any(e.name == "DEBIAN_FRONTEND" and e.value == "noninteractive" for e in envs):
        return True
    return bool(re.search(r"DEBIAN_FRONTEND=['\"]?noninteractive", ref.script.text))


def check_init_debian_frontend(ctx: Context) -> Found:
    for ref in _scripts(ctx, "init"):
        if _debian_frontend_set(ctx, ref):
            continue
        for cmd, smap in _script_commands(ctx, ref):
            if cmd.name in ("apt-get", "apt", "aptitude") and (is_install(cmd) or is_upgrade(cmd)):
                yield _at(smap, cmd.words[0]), (
                    f"{cmd.name} without DEBIAN_FRONTEND=noninteractive can stop at a debconf "
                    "prompt (tzdata, keyboard-configuration, ...); set it on the command or with "
                    "ENV DEBIAN_FRONTEND=noninteractive")


def check_init_prefer_packages(ctx: Context) -> Found:
    for ref in _scripts(ctx, "init"):
        for cmd, smap in _script_commands(ctx, ref):
            if cmd.name in _INSTALL_VERBS and is_install(cmd):
                yield _at(smap, cmd.words[0]), (
                    f"packages installed with {cmd.name} in INIT; PACKAGES is portable across "
                    "distributions and installs non-interactively")


def check_pipe_to_shell(ctx: Context) -> Found:
    for ref in ctx.scripts():
        smap = ScriptMap(ref.script, ctx.lines)
        seen: set[int] = set()
        for cmd in commands(ref.script.text):
            src = cmd.piped_from
            if src and src.name in DOWNLOADERS and cmd.name in _INTERPRETERS:
                seen.add(src.first.index)
                yield _at(smap, src.first), (
                    f"{src.name} output piped into {cmd.name} runs whatever the server sends, "
                    "as root; download to a file, verify a checksum or signature, then run it")
        for index, line in enumerate(ref.script.text.splitlines()):
            match = _SUBST_PIPE_RE.search(line)
            if match and index not in seen:
                yield smap.pos(index, match.start() + 1), (
                    "a shell runs a downloaded script, as root; download to a file, verify a "
                    "checksum or signature, then run it")


def check_script_secret(ctx: Context) -> Found:
    for ref in ctx.scripts():
        smap = ScriptMap(ref.script, ctx.lines)
        for index, line in enumerate(ref.script.text.splitlines()):
            what = secret_in(line)
            if what:
                yield smap.pos(index, 1 + len(line) - len(line.lstrip())), (
                    f"{ref.phase.upper()} of {ref.service.name!r} contains {what}; scripts are "
                    "stored in the artifact and the image: use an ARG")


def check_sudo(ctx: Context) -> Found:
    for ref in ctx.scripts():
        for cmd, smap in _script_commands(ctx, ref):
            for wrapper in cmd.wrappers:
                if wrapper.text in ("sudo", "doas"):
                    yield _at(smap, wrapper), (
                        f"{wrapper.text} is not needed: INIT and UPDATE already run as root, and "
                        "it may be missing or ask for a password on a fresh image")


def _copy_source_exists(ctx: Context, copy: ir.Copy, source: str) -> bool:
    base = Path(copy.context) if copy.context else ctx.base_dir
    path = Path(source) if Path(source).is_absolute() else base / source
    if any(ch in source for ch in "*?["):
        return any(path.parent.glob(path.name))
    return path.exists()


def check_copy_missing(ctx: Context) -> Found:
    for svc in ctx.amifile.services:
        for copy in svc.copies:
            for source in copy.sources:
                if not _copy_source_exists(ctx, copy, source):
                    where = Path(copy.context) if copy.context else ctx.base_dir
                    yield (_find_word(ctx, copy.pos, "COPY", source, copy.pos.line),
                           f"COPY source {source!r} does not exist (looked in {where})")


def check_init_upgrade(ctx: Context) -> Found:
    for ref in _scripts(ctx, "init"):
        for cmd, smap in _script_commands(ctx, ref):
            if cmd.name in _UPGRADE_VERBS and is_upgrade(cmd):
                yield _at(smap, cmd.words[0]), (
                    f"'{cmd.name} {_verb(cmd)}' makes the layer depend on the day it was baked, "
                    "while its cache key does not change; pin versions, or let the base image "
                    "bring updates")


_REBOOT_SYSTEMCTL = {"reboot", "poweroff", "halt", "kexec", "soft-reboot"}


def check_reboot(ctx: Context) -> Found:
    for ref in ctx.scripts():
        for cmd, smap in _script_commands(ctx, ref):
            name = cmd.name
            hit = (name in ("reboot", "shutdown", "poweroff", "halt")
                   or (name == "systemctl" and _verb(cmd) in _REBOOT_SYSTEMCTL)
                   or (name in ("init", "telinit") and cmd.args[:1] in (["0"], ["6"])))
            if hit:
                why = ("cuts the build's SSH session and fails the bake" if ref.phase == "init"
                       else "runs at every boot: the machine reboots forever")
                yield _at(smap, cmd.words[0]), f"{name} in {ref.phase.upper()} {why}"


def _requirement_closure(ctx: Context, name: str) -> list[ir.Service]:
    """Every service ``name`` requires, directly or not (cycle-safe), nearest first."""
    known = ctx.services()
    return [known[d] for d in ctx.requirement_closure(name)]


def check_duplicate_packages(ctx: Context) -> Found:
    for svc in ctx.amifile.services:
        end = _service_end(ctx, svc)
        inherited: dict[str, str] = {}
        for dep in _requirement_closure(ctx, svc.name):
            for package in dep.packages:
                inherited.setdefault(package, dep.name)
        seen: list[str] = []
        for package in svc.packages:
            if package in seen:
                yield (_find_word(ctx, svc.pos, "PACKAGES", package, end,
                                  nth=seen.count(package) + 1),
                       f"package {package} is listed twice in {svc.name!r}")
            elif package in inherited:
                yield (_find_word(ctx, svc.pos, "PACKAGES", package, end),
                       f"package {package} is already installed by {inherited[package]!r}, "
                       f"which {svc.name!r} requires")
            seen.append(package)


# --------------------------------------------------------------------------- AM4xxx


def check_unknown_service(ctx: Context) -> Found:
    if not ctx.includes_resolved:
        return  # an unresolved INCLUDE may declare it; the resolver error says why
    known = ctx.services()
    for svc in ctx.amifile.services:
        for req in svc.requires:
            if req.name not in known:
                yield req.pos, f"{svc.name!r} requires unknown service {req.name!r}"
    for req in ctx.amifile.enables:
        if req.name not in known:
            yield req.pos, f"ENABLE names unknown service {req.name!r}"


def check_cycle(ctx: Context) -> Found:
    """One finding per cycle, found by a depth-first search (linear in the graph)."""
    known = ctx.services()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    for svc in ctx.amifile.services:
        if svc.name in state:
            continue
        # Iterative DFS: (service, index of the next requirement to follow).
        path: list[str] = [svc.name]
        stack: list[tuple[str, int]] = [(svc.name, 0)]
        state[svc.name] = 1
        while stack:
            name, i = stack[-1]
            reqs = known[name].requires if name in known else ()
            if i >= len(reqs):
                stack.pop()
                path.pop()
                state[name] = 2
                continue
            stack[-1] = (name, i + 1)
            req = reqs[i]
            if req.name not in known:
                continue
            if state.get(req.name) == 1:
                chain = path[path.index(req.name):]
                # Point at the start service's requirement that enters the cycle.
                start = known[chain[0]]
                first = next((r for r in start.requires if len(chain) > 1 and r.name == chain[1]),
                             req)
                yield first.pos, "REQUIRES cycle: " + " -> ".join([*chain, chain[0]])
            elif req.name not in state:
                state[req.name] = 1
                path.append(req.name)
                stack.append((req.name, 0))


def _referenced(name: str, text: str) -> bool:
    return re.search(r"\$(?:" + re.escape(name) + r"\b|\{" + re.escape(name) + r"\b)",
                     text) is not None


def check_unused_arg(ctx: Context) -> Found:
    af = ctx.amifile
    texts = [ref.script.text for ref in ctx.scripts()]
    texts += [e.value for e in af.envs] + [lb.value for lb in af.labels]
    texts += [af.base.ref] if af.base else []
    for svc in [*af.services, *ctx.external.values()]:
        texts += [e.value for e in svc.envs] + [s.text for s in svc.inits + svc.updates]
        texts += [p for c in svc.copies for p in (*c.sources, c.dest)]
        texts += list(svc.packages)
    blob = "\n".join(texts)
    for arg in af.args:
        if not _referenced(arg.name, blob):
            yield arg.pos, (f"ARG {arg.name} is never used (no ${arg.name} or ${{{arg.name}}} "
                            "in a script, ENV or LABEL)")


def _baked(ctx: Context) -> list[str]:
    """Names of the services baked by default: ENABLE (or every service declared here),
    with their requirements."""
    af = ctx.amifile
    roots = [r.name for r in af.enables] if af.enables else [s.name for s in af.services]
    baked: dict[str, None] = {}
    for root in roots:
        baked.setdefault(root)
        for name in ctx.requirement_closure(root):
            baked.setdefault(name)
    return list(baked)


def layer_order(ctx: Context) -> list[str]:
    """The baked services in layer order: topological, ties broken by declaration order."""
    known = ctx.services()
    baked = set(_baked(ctx))
    declared = [n for n in [*ctx.external, *(s.name for s in ctx.amifile.services)]
                if n in baked]
    declared = list(dict.fromkeys(declared))
    order: list[str] = []
    while len(order) < len(declared):
        ready = next((n for n in declared if n not in order and all(
            r.name in order or r.name not in baked or r.name == n
            for r in known[n].requires)), None)
        if ready is None:  # a cycle: reported by AM4002; finish in declaration order
            order += [n for n in declared if n not in order]
            break
        order.append(ready)
    return order


def check_unreachable_service(ctx: Context) -> Found:
    if not ctx.amifile.enables:
        return
    baked = set(_baked(ctx))
    for svc in ctx.amifile.services:
        if svc.name not in baked:
            yield svc.pos, (f"service {svc.name!r} is neither enabled nor required by an enabled "
                            "service: it is only installed when requested at boot")


_HEAVY_COMMANDS = {"make", "cmake", "ninja", "cargo", "go", "gcc", "cc", "mvn", "gradle",
                   "cpanm", "cpan", "gem", "npm", "yarn", "pnpm", "pip", "pip3", "bundle",
                   "composer", "curl", "wget", "git", "pipx", "uv", "poetry"}


def _heavy(svc: ir.Service) -> str | None:
    """Why a service's init layer is slow to rebuild, or ``None``."""
    if svc.packages:
        return f"installs {len(svc.packages)} package(s)"
    for script in svc.inits:
        for cmd in commands(script.text):
            if cmd.name in PACKAGE_MANAGERS and is_install(cmd):
                return f"runs {cmd.name} install"
            if cmd.name in _HEAVY_COMMANDS:
                return f"runs {cmd.name}"
    return None


def _tree_copy(ctx: Context, copy: ir.Copy) -> str | None:
    """A COPY source that is a directory tree (application code changes often), if any."""
    base = Path(copy.context) if copy.context else ctx.base_dir
    for source in copy.sources:
        path = Path(source) if Path(source).is_absolute() else base / source
        if source.endswith("/") or source in (".", "./") or path.is_dir():
            return source
    return None


def check_cache_busting_copy(ctx: Context) -> Found:
    order = layer_order(ctx)
    known = ctx.services()
    own = {s.name for s in ctx.amifile.services}
    for k, name in enumerate(order):
        svc = known[name]
        if name not in own:
            continue
        tree = next(((c, t) for c in svc.copies if (t := _tree_copy(ctx, c))), None)
        if tree is None:
            continue
        copy, source = tree
        for later in order[k + 1:]:
            why = _heavy(known[later])
            if why is None:
                continue
            depends = name in ctx.requirement_closure(later)
            fix = (f"move the COPY into a service that requires {later!r}" if depends else
                   f"declare {later!r} before {name!r} or make {name!r} require it")
            yield copy.pos, (
                f"COPY {source} in {name!r} comes before {later!r} (which {why}) in the layer "
                f"order: every change under {source} rebuilds {later!r} too; {fix}")
            break


# --------------------------------------------------------------------------- the table


def _rule(id: str, severity: str, summary: str, check) -> Rule:
    return Rule(id=id, severity=severity, summary=summary, doc_anchor=id.lower(), check=check)


RULES: tuple[Rule, ...] = (
    _rule("AM1000", "error", "The Amifile does not parse", None),
    _rule("AM1001", "error", "The Amifile does not resolve (INCLUDE, REQUIRES)", None),
    _rule("AM1002", "warning", "Service is empty", check_empty_service),
    _rule("AM2001", "warning", "No FROM: the target's default base image is used",
          check_from_missing),
    _rule("AM2002", "warning", "FROM uses ':latest' or no version", check_from_latest),
    _rule("AM2003", "error", "Credential-looking literal in ENV or LABEL", check_env_label_secret),
    _rule("AM2004", "error", "ARG with a secret-looking name or value has a default",
          check_arg_secret_default),
    _rule("AM3001", "error", "Package installation in UPDATE (runs at every boot)",
          check_update_install),
    _rule("AM3002", "warning", "Package install in INIT without -y (interactive)",
          check_init_install_yes),
    _rule("AM3003", "warning", "apt install in INIT without DEBIAN_FRONTEND=noninteractive",
          check_init_debian_frontend),
    _rule("AM3004", "info", "Packages installed in INIT instead of PACKAGES",
          check_init_prefer_packages),
    _rule("AM3005", "warning", "Downloaded script piped into a shell", check_pipe_to_shell),
    _rule("AM3006", "error", "Credential-looking literal in an INIT or UPDATE script",
          check_script_secret),
    _rule("AM3007", "warning", "sudo in a script that already runs as root", check_sudo),
    _rule("AM3008", "error", "COPY source does not exist", check_copy_missing),
    _rule("AM3009", "warning", "Full system upgrade in INIT (not reproducible)",
          check_init_upgrade),
    _rule("AM3010", "error", "reboot/shutdown in a script", check_reboot),
    _rule("AM3011", "info", "Package listed twice or already installed by a requirement",
          check_duplicate_packages),
    _rule("AM4001", "error", "REQUIRES or ENABLE names an unknown service",
          check_unknown_service),
    _rule("AM4002", "error", "REQUIRES cycle", check_cycle),
    _rule("AM4003", "warning", "ARG never used", check_unused_arg),
    _rule("AM4004", "info", "Service neither enabled nor required (only when ENABLE is used)",
          check_unreachable_service),
    _rule("AM4005", "info", "COPY of a source tree before a heavy init layer (cache busting)",
          check_cache_busting_copy),
)

RULES_BY_ID: dict[str, Rule] = {rule.id: rule for rule in RULES}
