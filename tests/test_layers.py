"""Stages hand each other files, never code: every import points into the bottom layer.

The rule (shoprank/__init__.py): the modules directly in `shoprank/` are the shared bottom
layer and import no stage; a stage (training, conversion, model_repository, loadtest,
bench) imports the bottom layer and the client, never another stage; the client
(`shoprank_client`, its own distribution) imports nothing of shoprank. The graph is read
from the source with `ast`, imports inside functions included, and the folder of each
package from pyproject.toml, where the layout is defined.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
CLIENT = "shoprank_client"


def package_dirs() -> dict[str, Path]:
    """Import name → folder, for the main distribution's packages and the client's."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = config.get("package-dir", {})
    dirs = {}
    for name in config["packages"]:
        parent, _, leaf = name.rpartition(".")
        if name in mapped:
            dirs[name] = ROOT / mapped[name]
        elif parent in dirs:
            dirs[name] = dirs[parent] / leaf
        else:
            dirs[name] = ROOT / name.replace(".", "/")
    dirs[CLIENT] = ROOT / "client" / CLIENT
    return dirs


def stages() -> set[str]:
    """The stage packages: the folders pyproject.toml maps below `shoprank`."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(config["package-dir"])


def modules() -> dict[str, Path]:
    """Every module of both distributions by its dotted name."""
    out = {}
    for package, folder in package_dirs().items():
        for path in folder.glob("*.py"):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            out[name] = path
    return out


def imports_of(module: str, path: Path) -> set[str]:
    """Names imported anywhere in the module (function bodies too), relative ones resolved."""
    is_package = path.stem == "__init__"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
    return found


def owner(name: str, stage_names: set[str]) -> str | None:
    """ "client", a stage package, "bottom", or None for third-party names."""
    if name == CLIENT or name.startswith(CLIENT + "."):
        return "client"
    for stage in stage_names:
        if name == stage or name.startswith(stage + "."):
            return stage
    if name == "shoprank" or name.startswith("shoprank."):
        return "bottom"
    return None


def violations(graph: dict[str, set[str]], stage_names: set[str]) -> list[str]:
    """Every import edge that breaks the layering, as "importer -> imported (why)"."""
    bad = []
    for importer, imported_names in sorted(graph.items()):
        src = owner(importer, stage_names)
        for imported in sorted(imported_names):
            dst = owner(imported, stage_names)
            if dst is None or dst == src:
                continue
            why = None
            if src == "client" and dst != "client":
                why = "the client installs alone: it imports nothing of shoprank"
            elif src == "bottom" and dst in stage_names:
                why = "the bottom layer imports no stage"
            elif src in stage_names and dst in stage_names:
                why = "stages share files, not code"
            if why:
                bad.append(f"{importer} -> {imported} ({why})")
    return bad


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return {name: imports_of(name, path) for name, path in modules().items()}


def test_the_layout_is_what_pyproject_says():
    dirs = package_dirs()
    for stage in ("training", "conversion", "model_repository", "loadtest", "bench"):
        assert dirs[f"shoprank.{stage}"] == ROOT / stage  # visible at the top of the repo
    assert all(folder.is_dir() for folder in dirs.values())


def test_imports_point_only_into_the_bottom_layer(graph):
    assert len(graph) > 40  # the scan found the code base, not an empty folder
    assert violations(graph, stages()) == []


@pytest.mark.parametrize(
    "importer, imported",
    [
        ("shoprank.training.encoder", "shoprank.conversion.export"),  # up the pipeline
        ("shoprank.conversion.convert", "shoprank.training.train"),  # down, but code
        ("shoprank.loadtest.workload", "shoprank.training.behaviour"),
        ("shoprank.runtime", "shoprank.model_repository.build"),  # bottom -> stage
        ("shoprank_client.search_client", "shoprank.contract"),  # client -> server
    ],
)
def test_the_check_catches_a_back_pointing_import(graph, importer, imported):
    broken = {**graph, importer: graph[importer] | {imported}}
    assert [v.split(" (")[0] for v in violations(broken, stages())] == [f"{importer} -> {imported}"]


def test_relative_and_function_level_imports_are_seen(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text(
        "from . import sibling\n"
        "def f():\n"
        "    from ..conversion import export\n"
        "    import shoprank.bench.report\n"
    )
    found = imports_of("shoprank.training.mod", path)
    assert {"shoprank.training.sibling", "shoprank.conversion.export"} <= found
    assert "shoprank.bench.report" in found
