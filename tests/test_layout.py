"""The house rules of the layout (README "Where things are"), checked so they cannot drift."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MAX_LINES = 450  # a file a newcomer reads top to bottom
MAX_TOP_MODULES = 8  # engine/'s top level; the rest lives in its packages


def python_files(*roots: str) -> list[Path]:
    return sorted(p for r in roots for p in ((REPO / r).rglob("*.py") if (REPO / r).is_dir() else [REPO / r]))


def test_no_file_is_over_the_line_limit():
    long = {str(p.relative_to(REPO)): n for p in python_files("engine", "ui", "app_pages", "app.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines: {long}"


def test_engine_top_level_holds_few_modules():
    top = [p.name for p in (REPO / "engine").glob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(top) <= MAX_TOP_MODULES, top


def test_the_engine_never_imports_streamlit():
    offenders = []
    for p in python_files("engine"):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{p.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] == "streamlit"]
    assert not offenders, offenders
