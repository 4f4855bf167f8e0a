"""docs/services.md documents every stock service the code ships, with its packages."""

from __future__ import annotations

import re
from pathlib import Path

from amic.amifile.resolve import stock_service_dirs, stock_service_names

DOC = Path(__file__).resolve().parents[2] / "docs" / "services.md"


def sections() -> dict[str, str]:
    parts = re.split(r"^## (\S+)\s*$", DOC.read_text(), flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def packages(name: str) -> set[str]:
    """The package words of a stock service's PACKAGES lines, prefixes (apt:, rpm:) off."""
    for d in stock_service_dirs():
        amifile = d / name / "Amifile"
        if amifile.is_file():
            words = [w for line in amifile.read_text().splitlines()
                     if line.strip().startswith("PACKAGES ") for w in line.split()[1:]]
            return {w.split(":", 1)[-1] for w in words}
    raise AssertionError(f"no Amifile for stock service {name}")


def test_every_stock_service_is_documented_and_nothing_else():
    names = set(stock_service_names())
    assert {"httpd", "nginx", "nodejs", "perl", "python"} <= names
    assert set(sections()) == names


def test_each_section_names_the_packages_its_service_installs():
    for name, text in sections().items():
        missing = {p for p in packages(name) if f"`{p}`" not in text}
        assert not missing, f"docs/services.md, {name}: packages not named: {sorted(missing)}"
