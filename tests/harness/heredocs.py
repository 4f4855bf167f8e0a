"""Files a shipped shell script writes with ``cat > PATH <<'TAG'`` here-documents."""

from __future__ import annotations

import re


def heredocs(script: str) -> dict[str, str]:
    """PATH -> the text a shell script writes there with a quoted here-document."""
    found = {}
    for m in re.finditer(r"^cat > (\S+) <<'(\w+)'\n(.*?)^\2$", script, re.M | re.S):
        found[m.group(1)] = m.group(3)
    return found
