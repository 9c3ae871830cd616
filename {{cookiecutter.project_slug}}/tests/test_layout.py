"""The README's "How it is built" lists the package's modules from the ground floor up, and says
that a module imports only modules listed above it. These tests hold the code to that picture:
a new module must be given its place, and an import that runs back up (the start of a circle)
fails here before a reader meets it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
PACKAGE = PROJECT / "src" / "{{ cookiecutter.package_name }}"
LISTING_START = "src/{{ cookiecutter.package_name }}/     from the ground floor up"
ENTRY = re.compile(r"^  (?P<name>[a-z_]+)(?:\.py|/)\s", re.MULTILINE)  # not a continuation line
ENTRY_POINTS = {"__init__", "__main__"}  # the package's face and `python -m`: above everything


def listed_modules() -> list[str]:
    """The top-level modules and packages in the README's listing, from the ground up."""
    text = (PROJECT / "README.md").read_text()
    start = text.index(LISTING_START)
    listing = text[start : text.index("```", start)]
    return [match["name"] for match in ENTRY.finditer(listing)]


def top_level(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported_top_levels(path: Path) -> set[str]:
    """The package's own top-level modules that `path` imports (relative imports only: the
    package imports itself no other way)."""
    folder = list(path.relative_to(PACKAGE).parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            base = folder[: len(folder) - (node.level - 1)]
            names = [node.module] if node.module else [alias.name for alias in node.names]
            for name in names:
                parts = base + name.split(".")
                if parts:
                    found.add(parts[0])
    return found


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_its_place_in_the_readme() -> None:
    listed = set(listed_modules())
    unlisted = {top_level(path) for path in modules()} - listed - ENTRY_POINTS
    assert unlisted == set(), f"add these to the README's 'How it is built': {sorted(unlisted)}"
    on_disk = {top_level(path) for path in modules()} | {
        path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__"
    }
    assert listed <= on_disk, f"listed but gone: {sorted(listed - on_disk)}"


def test_no_module_imports_one_listed_above_it() -> None:
    rank = {name: floor for floor, name in enumerate(listed_modules())}
    upward = []
    for path in modules():
        home = top_level(path)
        if home in ENTRY_POINTS:
            continue
        for target in imported_top_levels(path):
            if target != home and target in rank and rank[target] >= rank[home]:
                upward.append(f"{path.relative_to(PACKAGE)} -> {target}")
    assert upward == [], f"imports that run back up the README's listing: {upward}"
