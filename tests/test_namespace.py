"""The data and callback layers install under the lit_edify namespace (issue 14 item 6)."""
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lit_edify.commands.fit import MovedClassPathError, build_cli

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_installed_names_outside_the_repository(tmp_path):
    """From another folder, lit_edify.data_modules / lit_edify.callbacks import; no top-level package does."""
    r = run_python("import importlib.util as u, lit_edify.data_modules.shapes as s, lit_edify.callbacks.ema as e\n"
                   "print(s.ShapesDataModule.__module__, e.EMA.__module__)\n"
                   "print(u.find_spec('data_modules'), u.find_spec('callbacks'))", tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["lit_edify.data_modules.shapes", "lit_edify.callbacks.ema", "None", "None"]


def test_old_import_inside_the_repository_names_the_new_one():
    """In the repository folder the source folders are on sys.path; importing them by the old name fails clearly
    instead of loading a second copy of every class."""
    r = run_python("import data_modules.shapes", ROOT)
    assert r.returncode != 0 and "lit_edify.data_modules" in r.stderr
    r = run_python("import callbacks.ema", ROOT)
    assert r.returncode != 0 and "lit_edify.callbacks" in r.stderr


def test_every_package_is_declared():
    """pyproject lists every package folder (setuptools discovery cannot see the mapped ones), mapped to its folder."""
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = dict(tool["package-dir"])
    declared = {}
    for name in tool["packages"]:
        parent = next((p for p in sorted(dirs, key=len, reverse=True) if name == p or name.startswith(p + ".")), None)
        rel = Path(dirs[parent], *name[len(parent):].split(".")[1:]) if parent else Path(*name.split("."))
        declared[name] = rel
    on_disk = {p.parent for top in ("lit_edify", "data_modules", "callbacks") for p in (ROOT / top).rglob("__init__.py")}
    assert {ROOT / rel for rel in declared.values()} == on_disk
    assert declared["lit_edify.data_modules"] == Path("data_modules")
    assert declared["lit_edify.callbacks"] == Path("callbacks")


@pytest.mark.parametrize("old", ["data_modules.shapes.ShapesDataModule", "callbacks.ema.EMA"])
def test_old_class_path_in_a_recipe_names_the_new_one(tmp_path, old):
    recipe = tmp_path / "old.yaml"
    key = "data" if old.startswith("data") else "trainer"
    body = f"  class_path: {old}\n" if key == "data" else f"  callbacks:\n    - class_path: {old}\n"
    recipe.write_text(f"{key}:\n{body}")
    with pytest.raises(MovedClassPathError, match=f"use lit_edify.{old}"):
        build_cli(["fit", "--config", str(recipe)], run=False)
    with pytest.raises(MovedClassPathError, match=f"use lit_edify.{old}"):
        build_cli(["fit", f"--data={old}"], run=False)


def test_recipes_use_new_class_paths():
    """Comments may mention lightning's own callbacks; no recipe names an old class path."""
    from lit_edify.commands.fit import _OLD_IN_YAML

    hits = {str(p): m.group(1) for p in (ROOT / "recipes").rglob("*.yaml")
            for m in _OLD_IN_YAML.finditer(p.read_text())}
    assert hits == {}
