"""The package layers, checked by parsing imports (nothing is imported).

Each package of ``sppdet`` may import only from its own layer and the layers before it, so the
folders show the architecture: foundation -> structures, ops -> data -> evaluation, vis ->
models -> workdir -> training -> stages -> pipelines -> bench. ``click`` and ``rich`` belong to
``cli/``; the library never renders anything. Within ``stages/`` (one module per command) no
stage imports another: what chains stages lives in ``pipelines/``.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sppdet"
LAYERS = [
    {"__init__", "config", "errors", "parallel", "fileio", "executors"},
    {"structures", "ops"},
    {"data"},
    {"evaluation", "vis"},
    {"models"},
    {"workdir"},
    {"training"},
    {"stages"},
    {"pipelines"},
    {"bench"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
FORBIDDEN = ("click", "rich")
#: Imports against the order allowed for now (none): the test fails on any other, and on a listed
#: one that is gone.
KNOWN: set[tuple[str, str]] = set()


def _part(module: str) -> str:
    """The first component under ``sppdet`` of a dotted module name."""
    return module.split(".")[1] if module.count(".") else "__init__"


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "sppdet":
                yield from (f"sppdet.{alias.name}" for alias in node.names)
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def _violations():
    found, forbidden = set(), []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _part("sppdet." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        for module in _imports(path):
            root = module.split(".")[0]
            if root in FORBIDDEN:
                forbidden.append(f"{path.relative_to(PACKAGE)} imports {module}")
            if root == "sppdet" and RANK[_part(module)] > RANK[here]:
                found.add((str(path.relative_to(PACKAGE)), module))
    return found, forbidden


def test_every_module_belongs_to_a_layer():
    tops = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
            if (p.suffix == ".py" or (p / "__init__.py").exists())}
    assert tops <= set(RANK), f"not in any layer: {sorted(tops - set(RANK))}"


def test_imports_follow_the_layer_order():
    found, forbidden = _violations()
    assert not forbidden, forbidden
    new = sorted(found - KNOWN)
    assert not new, "imports against the layer order:\n" + "\n".join(f"{a} -> {b}" for a, b in new)
    gone = sorted(KNOWN - found)
    assert not gone, "fixed, remove from KNOWN:\n" + "\n".join(f"{a} -> {b}" for a, b in gone)


#: Stage -> stage imports allowed, each with its reason; the test fails on any other.
STAGE_TO_STAGE = {
    # finetune --train-conv trains the trunk, then recomputes the split's features with it, and
    # records the new trunk only once they exist (so an interrupted run resumes): one command.
    ("stages/finetune.py", "sppdet.stages.extract"),
}


def test_no_stage_imports_another_stage():
    found = set()
    for path in sorted((PACKAGE / "stages").glob("*.py")):
        for module in _imports(path):
            if module.startswith("sppdet.stages.") and module != f"sppdet.stages.{path.stem}":
                found.add((str(path.relative_to(PACKAGE)), module))
    assert found == STAGE_TO_STAGE, f"stage -> stage imports: {sorted(found ^ STAGE_TO_STAGE)}"
