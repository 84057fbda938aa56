"""Stages hand each other files, never code; the serving path never loads torch.

The rules (shoprank/__init__.py): `shoprank/` and its sub-packages are the shared bottom
layer and import no stage; a stage (training, conversion, model_repository, loadtest,
bench) imports the bottom layer and the client, never another stage; the client
(`shoprank_client`, its own distribution) imports nothing of shoprank. The graph is read
from the source with `ast`, imports inside functions included, and the folder of each
package from pyproject.toml, where the layout is defined.

The torch-free rule: the online core (`shoprank.core`), the contract, the data helpers and
the operations code import no torch, transformers or sentence-transformers, nor the torch
models of `shoprank.models`, anywhere; and what a serving process imports when it loads
(the Triton models, the repository builder, the deploy and server CLIs, the load test, the
client) reaches none of them through its module-level imports. Read statically, it fails in
milliseconds, before any server starts (test_server.py also reads a live stub's memory maps).
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


def import_nodes(tree: ast.AST, at_load: bool) -> list[ast.Import | ast.ImportFrom]:
    """Import statements of a module; `at_load`: only those that run when it is imported
    (not inside function bodies, not under `if TYPE_CHECKING:`)."""
    found = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        if at_load and isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if at_load and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        stack.extend(ast.iter_child_nodes(node))
    return found


def imports_of(module: str, path: Path, at_load: bool = False) -> set[str]:
    """Names imported anywhere in the module (function bodies too, unless `at_load`),
    relative ones resolved."""
    is_package = path.stem == "__init__"
    found = set()
    for node in import_nodes(ast.parse(path.read_text(), filename=str(path)), at_load):
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


# What the serving path must never load: the deep-learning stack and the torch models.
HEAVY = ("torch", "transformers", "sentence_transformers", "safetensors.torch", "shoprank.models")
# Packages that import none of HEAVY anywhere, function bodies included.
TORCH_FREE = ("shoprank.core", "shoprank.data", "shoprank.ops", "shoprank.contract")
# Packages whose module-level imports, followed through shoprank, reach none of HEAVY: what
# a serving process, the repository builder and the CLIs around the server load. (The
# gpu-embedded target imports `shoprank.models.gpu` inside the function that needs it.)
SERVING = (*TORCH_FREE, "shoprank.model_repository", "shoprank.loadtest", CLIENT)


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def heavy_imports(graph: dict[str, set[str]], load_graph: dict[str, set[str]]) -> list[str]:
    """Every way the torch-free rule is broken, as "importer -> ... -> heavy name"."""
    bad = [
        f"{m} -> {name}"
        for m, names in sorted(graph.items())
        if under(m, TORCH_FREE)
        for name in sorted(names)
        if under(name, HEAVY)
    ]
    for start in sorted(m for m in load_graph if under(m, SERVING)):
        seen, paths = {start}, [[start]]
        while paths:
            path = paths.pop()
            for name in sorted(load_graph.get(path[-1], ())):
                if under(name, HEAVY):
                    bad.append(" -> ".join([*path, name]))
                elif name in load_graph and name not in seen:
                    seen.add(name)
                    paths.append([*path, name])
    return sorted(set(bad))


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return {name: imports_of(name, path) for name, path in modules().items()}


@pytest.fixture(scope="module")
def load_graph() -> dict[str, set[str]]:
    return {name: imports_of(name, path, at_load=True) for name, path in modules().items()}


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
        ("shoprank.training.base_encoder", "shoprank.conversion.export"),  # up the pipeline
        ("shoprank.conversion.convert", "shoprank.training.train"),  # down, but code
        ("shoprank.loadtest.workload", "shoprank.training.behaviour"),
        ("shoprank.core.catalog", "shoprank.model_repository.build"),  # bottom -> stage
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


def test_the_serving_path_imports_no_torch(graph, load_graph):
    assert any(m.startswith("shoprank.core.") for m in graph)  # the core was found
    assert heavy_imports(graph, load_graph) == []


@pytest.mark.parametrize(
    "importer, imported",
    [
        ("shoprank.core.ranking", "torch"),  # the core itself, at load
        ("shoprank.core.scoring", "shoprank.models.fusion"),  # a torch model
        ("shoprank.data.datasets", "sentence_transformers"),
    ],
)
def test_the_torch_rule_catches_a_heavy_import(graph, load_graph, importer, imported):
    broken_graph = {**graph, importer: graph[importer] | {imported}}
    broken_load = {**load_graph, importer: load_graph[importer] | {imported}}
    found = heavy_imports(broken_graph, broken_load)
    assert f"{importer} -> {imported}" in found
    # ...and every serving model that reaches the importer is named with its path.
    if importer == "shoprank.core.ranking":
        assert any(
            p.startswith("shoprank.model_repository.models.ranker -> ") and p.endswith(imported)
            for p in found
        )


def test_a_function_level_import_breaks_only_the_strict_rule(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("def f():\n    import torch\n")
    assert "torch" in imports_of("shoprank.core.mod", path)
    assert "torch" not in imports_of("shoprank.core.mod", path, at_load=True)
