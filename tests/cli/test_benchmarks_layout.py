"""benchmarks/ is a package: every module lives in a folder, imports as `benchmarks.<folder>.<name>`, and neither
edits sys.path nor imports tests/."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
MODULES = sorted(p for p in BENCH.rglob("*.py") if p.name != "__init__.py")
FOLDERS = ("suites", "lib", "profile", "experiments")
TEST_HELPERS = {p.stem for p in (BENCH.parent / "tests").glob("*.py")}  # factories, web_fixtures, ...


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(BENCH.parent).with_suffix("").parts)


def test_every_script_lives_in_a_folder():
    assert MODULES
    for p in MODULES:
        assert p.relative_to(BENCH).parts[0] in FOLDERS, f"{p}: put it in one of benchmarks/{{{','.join(FOLDERS)}}}/"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_as_a_package_without_path_edits_or_tests(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
            pytest.fail(f"{path}:{node.lineno}: sys.path edit; import through the benchmarks package instead")
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                assert top != "tests" and top not in TEST_HELPERS, f"{path}:{node.lineno}: imports tests/ ({name})"
    importlib.import_module(module_name(path))  # the moved imports resolve
