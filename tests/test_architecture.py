"""The shape of the package: no import cycle, self-contained checkpoint code, scripts on the public API only."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minibert_hf"


def imported_modules(path: Path) -> set[str]:
    """The package modules a file imports (``from .x import``, ``from minibert_hf.x import``, ``import_module``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:
                found.update([node.module] if node.module else [alias.name for alias in node.names])
            elif node.module and node.module.startswith("minibert_hf"):
                rest = node.module.split(".")[1:]
                found.update(rest[:1] or [alias.name for alias in node.names])
    return {name.split(".")[0] for name in found} & {p.stem for p in PACKAGE.glob("*.py")}


def test_no_import_cycle_in_the_package():
    graph = {p.stem: imported_modules(p) - {p.stem} for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    state = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join([*path, module])
        state[module] = "open"
        for child in sorted(graph.get(module, ())):
            visit(child, [*path, module])
        state[module] = "done"

    for module in sorted(graph):
        visit(module, [])


def test_the_checkpoint_files_import_only_torch_transformers_and_each_other():
    allowed = {"torch", "transformers", "math", "typing", "dataclasses", "__future__"}
    for name in ("configuration_minibert.py", "modeling_minibert.py"):
        for node in ast.walk(ast.parse((PACKAGE / name).read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {"configuration_minibert"} if node.level == 1 else {node.module.split(".")[0]}
            else:
                continue
            assert roots <= allowed | {"configuration_minibert"}, (name, roots)


def test_scripts_use_no_private_name_of_the_package():
    for script in sorted((ROOT / "scripts").glob("*.py")):
        for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("minibert_hf"):
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                assert not private, (script.name, node.module, private)
