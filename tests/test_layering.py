"""The library layers (math, networks, modules, pipelines) do not import the data or callback layers."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("lit_edify/diffusion", "lit_edify/nn", "lit_edify/modules", "lit_edify/pipelines", "lit_edify/aspect.py")
APPLICATION = ("lit_edify.data_modules", "lit_edify.callbacks", "data_modules", "callbacks")


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_library_layers_do_not_import_data_or_callbacks():
    files = [f for p in LIBRARY for f in ((ROOT / p).rglob("*.py") if (ROOT / p).is_dir() else [ROOT / p])]
    assert len(files) > 15
    bad = {str(f.relative_to(ROOT)): sorted(m for m in imported_modules(f) if any(m == a or m.startswith(a + ".") for a in APPLICATION))
           for f in files}
    assert {k: v for k, v in bad.items() if v} == {}
