"""``amic lint``: rules as data, inline ignores, shellcheck for INIT/UPDATE, CI formats.

The CLI calls :func:`run`; ``--list-rules`` prints :data:`RULES`. Rule ids, severities and
examples are catalogued in ``docs/lint-rules.md``.
"""

from amic.lint.engine import (
                              DEFAULT_THRESHOLD,
                              THRESHOLDS,
                              check,
                              exit_code,
                              lint_paths,
                              lint_text,
                              run,
)
from amic.lint.formats import FORMATS, render
from amic.lint.model import SEVERITIES, Finding, Rule
from amic.lint.rules import RULES, RULES_BY_ID

__all__ = ["DEFAULT_THRESHOLD", "FORMATS", "RULES", "RULES_BY_ID", "SEVERITIES", "THRESHOLDS",
           "Finding", "Rule", "check", "exit_code", "lint_paths", "lint_text", "render", "run"]
