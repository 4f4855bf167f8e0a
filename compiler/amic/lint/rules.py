"""The lint rules: the :data:`RULES` table, one row per rule (checks live in checks_*.py).

A check takes a :class:`~amic.lint.model.Context` and yields ``(Pos, message)``; the engine
adds the rule id and severity, applies pragmas and ``--ignore``. Ids are stable: a retired
rule's id is never reused. Ranges: AM1xxx parse/structure, AM2xxx global instructions,
AM3xxx service instructions, AM4xxx whole file. Each rule has a section in
``docs/lint-rules.md``.
"""

from __future__ import annotations

from amic.lint import checks_file as file_checks
from amic.lint import checks_instructions as instructions
from amic.lint import checks_scripts as scripts
from amic.lint import checks_variables as variables
from amic.lint.model import Rule

# --------------------------------------------------------------------------- the table


def _rule(id: str, severity: str, summary: str, check) -> Rule:
    return Rule(id=id, severity=severity, summary=summary, doc_anchor=id.lower(), check=check)


RULES: tuple[Rule, ...] = (
    _rule("AM1000", "error", "The Amifile does not parse", None),
    _rule("AM1001", "error", "The Amifile does not resolve (INCLUDE, REQUIRES)", None),
    _rule("AM1002", "warning", "Service is empty", instructions.check_empty_service),
    _rule("AM2001", "warning", "No FROM: the target's default base image is used",
          instructions.check_from_missing),
    _rule("AM2002", "warning", "FROM uses ':latest' or no version", instructions.check_from_latest),
    _rule("AM2003", "error", "Credential-looking literal in ENV or LABEL", instructions.check_env_label_secret),
    _rule("AM2004", "error", "ARG with a secret-looking name or value has a default",
          instructions.check_arg_secret_default),
    _rule("AM3001", "error", "Package installation in UPDATE (runs at every boot)",
          scripts.check_update_install),
    _rule("AM3002", "warning", "Package install in INIT without -y (interactive)",
          scripts.check_init_install_yes),
    _rule("AM3003", "warning", "apt install in INIT without DEBIAN_FRONTEND=noninteractive",
          scripts.check_init_debian_frontend),
    _rule("AM3004", "info", "Packages installed in INIT instead of PACKAGES",
          scripts.check_init_prefer_packages),
    _rule("AM3005", "warning", "Downloaded script piped into a shell", scripts.check_pipe_to_shell),
    _rule("AM3006", "error", "Credential-looking literal in an INIT or UPDATE script",
          scripts.check_script_secret),
    _rule("AM3007", "warning", "sudo in a script that already runs as root", scripts.check_sudo),
    _rule("AM3008", "error", "COPY source does not exist", scripts.check_copy_missing),
    _rule("AM3009", "warning", "Full system upgrade in INIT (not reproducible)",
          scripts.check_init_upgrade),
    _rule("AM3010", "error", "reboot/shutdown in a script", scripts.check_reboot),
    _rule("AM3011", "info", "Package listed twice or already installed by a requirement",
          scripts.check_duplicate_packages),
    _rule("AM3012", "warning", "Script too large for shellcheck (not checked)", None),
    _rule("AM3013", "error", "COPY source outside the build context",
          scripts.check_copy_outside_context),
    _rule("AM3014", "warning", "SECRET read in UPDATE (secrets reach INIT only)",
          scripts.check_update_secret),
    _rule("AM3015", "warning", "Variable in INIT/UPDATE that nothing sets",
          variables.check_undefined_variable),
    _rule("AM4001", "error", "REQUIRES or ENABLE names an unknown service",
          file_checks.check_unknown_service),
    _rule("AM4002", "error", "REQUIRES cycle", file_checks.check_cycle),
    _rule("AM4003", "warning", "ARG never used", file_checks.check_unused_arg),
    _rule("AM4004", "info", "Service neither enabled nor required (only when ENABLE is used)",
          file_checks.check_unreachable_service),
    _rule("AM4005", "info", "COPY of a source tree before a heavy init layer (cache busting)",
          file_checks.check_cache_busting_copy),
)

RULES_BY_ID: dict[str, Rule] = {rule.id: rule for rule in RULES}
