"""Run ``mypy --strict`` on the installed package layout.

The repository keeps ``proxy/``, ``middleware/`` and ``plugins/`` as top-level folders that
setuptools maps into one import root (``llm_proxy``). mypy cannot follow the editable-install
finder, so this builds the same layout as a tree of symlinks under ``build/typecheck`` (cheap,
rebuilt on every run) and points mypy at it, with the scripts in ``tools/`` checked too. Paths in
mypy's output are mapped back to the repository's files, and a per-folder count is printed at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

__all__ = ["build_tree", "main"]

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"
PACKAGE = "llm_proxy"
# subpackage name -> repository folder it is installed from (pyproject's package-dir)
MAPPED = {"middleware": "middleware", "plugins": "plugins"}

_LINE = re.compile(r"^(?P<path>[^:\s]+\.pyi?):\d+(?::\d+)?: (?P<kind>\w+):")


def build_tree(root: Path = ROOT, tree: Path = TREE) -> Path:
    """Recreate ``tree/llm_proxy`` as symlinks into ``proxy/``, ``middleware/`` and ``plugins/``."""
    if tree.exists():
        shutil.rmtree(tree)
    package = tree / PACKAGE
    package.mkdir(parents=True)
    for entry in sorted((root / "proxy").iterdir()):
        if entry.name == "__pycache__" or entry.name in MAPPED:
            continue
        (package / entry.name).symlink_to(entry)
    for name, folder in MAPPED.items():
        (package / name).symlink_to(root / folder, target_is_directory=True)
    return tree


def _repo_path(path: str, tree: Path = TREE) -> str:
    """``build/typecheck/llm_proxy/middleware/auth.py`` -> ``middleware/auth.py``."""
    prefix = os.path.relpath(tree / PACKAGE, ROOT) + os.sep
    if not path.startswith(prefix):
        return path
    rest = path[len(prefix) :]
    head, _, tail = rest.partition(os.sep)
    if head in MAPPED and tail:
        return os.path.join(MAPPED[head], tail)
    return os.path.join("proxy", rest)


def _folder(path: str) -> str:
    parts = Path(path).parts
    return "/".join(parts[:2]) if len(parts) > 2 else parts[0]


def main(argv: list[str] | None = None) -> int:
    """Build the tree, run mypy on the package (extra arguments go to mypy), report per folder.

    Non-zero when mypy found an error or could not run (``make test`` stops on it)."""
    args = sys.argv[1:] if argv is None else argv
    tree = build_tree()
    tools = Path(__file__).resolve().parent
    env = dict(os.environ, MYPYPATH=os.pathsep.join([str(tree), str(tools)]))
    scripts = [arg for path in sorted(tools.glob("*.py")) for arg in ("-m", path.stem)]
    command = [sys.executable, "-m", "mypy", "--strict", "-p", PACKAGE, *scripts, *args]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    per_folder: Counter[str] = Counter()
    for line in result.stdout.splitlines():
        match = _LINE.match(line)
        if match:
            path = _repo_path(match["path"])
            if match["kind"] == "error":
                per_folder[_folder(path)] += 1
            line = path + line[len(match["path"]) :]
        print(line)
    sys.stderr.write(result.stderr)
    if per_folder:
        print("\nerrors by folder:")
        for folder, count in sorted(per_folder.items()):
            print(f"  {count:5d}  {folder}")
    return result.returncode or (1 if per_folder else 0)


if __name__ == "__main__":
    sys.exit(main())
