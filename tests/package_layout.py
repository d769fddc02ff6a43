"""Where the installed package's modules come from: the ``package-dir`` table of pyproject.toml.

The repository keeps the design card's top-level folders (``proxy/``, ``middleware/``,
``plugins/``) and installs them under one import root; the layer and packaging tests both
need that mapping, and read it from the one place that defines it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path

__all__ = ["ROOT", "package_dirs", "source_modules"]

ROOT = Path(__file__).resolve().parents[1]


def package_dirs(root: Path = ROOT) -> dict[str, Path]:
    """``[tool.setuptools] package-dir``: import name -> folder."""
    with open(root / "pyproject.toml", "rb") as f:
        table = tomllib.load(f)["tool"]["setuptools"]["package-dir"]
    return {name: root / folder for name, folder in table.items()}


def source_modules(dirs: dict[str, Path]) -> Iterator[tuple[str, Path]]:
    """``(dotted module name, file)`` for every ``.py`` file under the mapped folders."""
    mapped = set(dirs.values())
    for prefix, folder in dirs.items():
        for path in sorted(folder.rglob("*.py")):
            rel = path.relative_to(folder)
            if any(folder.joinpath(*rel.parts[:i]) in mapped for i in range(1, len(rel.parts))):
                continue  # a nested folder mapped under a name of its own
            parts = [*rel.parts[:-1]] + ([] if path.name == "__init__.py" else [path.stem])
            yield ".".join([prefix, *parts]), path
