"""Every dependency pyproject.toml declares is imported by the package: a declared package nobody imports is a
download for nothing (``evaluate`` was one: the accuracies are computed in the package, and ``evaluate.load`` fetches
its metrics from the Hub, which fails offline)."""

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
IMPORT_NAMES = {"pillow": "PIL", "scikit-learn": "sklearn", "pyyaml": "yaml"}
"""Distribution name -> module name, where they differ."""


def test_every_declared_dependency_is_imported_by_the_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0].lower() for requirement in project["dependencies"]]
    source = "\n".join(path.read_text(encoding="utf-8") for path in (ROOT / "hf_advsoup").rglob("*.py"))
    unused = [name for name in names
              if not re.search(rf"^\s*(import|from)\s+{IMPORT_NAMES.get(name, name)}\b", source, flags=re.MULTILINE)]
    assert unused == [], f"declared in pyproject.toml but never imported: {unused}"
    assert "evaluate" not in names
