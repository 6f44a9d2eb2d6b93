"""The package's shape: no code outside a kind's own modules compares the dataset kind, and no
code outside the lake layout builds lake paths. (Import layers and cycles: lint-imports, in CI.)"""
from __future__ import annotations

import ast
from pathlib import Path

from pipeline import kinds

ROOT = Path(__file__).resolve().parents[1]
# A kind's own modules: its interface implementation and the ingest code only it uses.
KIND_MODULES = {"pipeline/kinds", "pipeline/ingest/images.py", "pipeline/ingest/image_tasks.py",
                "pipeline/ingest/tabular.py", "pipeline/ingest/tabular_tasks.py", "pipeline/ingest/sequence.py"}
# The directory names and partition prefixes of the lake (pipeline/core/layout.py).
LAKE_PARTS = ("curated", "models", "predictions", "quarantine", "_latest", "_staging", "_trash", "mlflow",
              "dt=", "v=", "checkpoints", "holdout_labels")


def _sources(exclude: set[str]) -> list[Path]:
    files = sorted([*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("jobs/*.py")])
    return [f for f in files if not any(str(f.relative_to(ROOT)).startswith(e) for e in exclude)]


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for e in node.elts for s in _strings(e)]
    return []


def kind_comparisons(source: str, names: set[str]) -> list[int]:
    """Lines that compare a value with a kind's name (==, !=, in, not in)."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(set(_strings(o)) & names for o in operands):
                hits.append(node.lineno)
    return hits


def lake_joins(source: str) -> list[int]:
    """Lines with an f-string that puts a lake directory name between path separators."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.JoinedStr) and any(isinstance(v, ast.FormattedValue) for v in node.values):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            if any(f"/{p}" in text or (p.endswith("=") and f"/{p}" in text) for p in LAKE_PARTS):
                hits.append(node.lineno)
    return hits


def test_the_checks_find_what_they_look_for():
    assert kind_comparisons('if kind == "images":\n    pass\nok = k in ("tabular", "x")\n', {"images", "tabular"}) == [1, 3]
    assert lake_joins('u = f"{root}/models/{name}"\nv = f"{out}/dt={day}"\nw = f"{a}/{b}"\n') == [1, 2]


def test_no_kind_name_is_compared_outside_the_kinds():
    names = set(kinds.KINDS)
    found = {str(f.relative_to(ROOT)): hits for f in _sources(KIND_MODULES)
             if (hits := kind_comparisons(f.read_text(), names))}
    assert found == {}, f"compare the kind only inside pipeline/kinds (add a method to kinds.base.Kind): {found}"


def test_no_lake_path_is_joined_outside_the_layout():
    found = {str(f.relative_to(ROOT)): hits for f in _sources({"pipeline/core/layout.py"})
             if (hits := lake_joins(f.read_text()))}
    assert found == {}, f"build lake paths with pipeline.core.layout.LakeLayout: {found}"
