"""The package's structure: no import cycles (counting imports inside functions too), and model
kinds found through the registry."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import drawnet

PACKAGE = Path(drawnet.__file__).parent


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """drawnet module -> the drawnet modules it imports anywhere in its body (but under TYPE_CHECKING)."""
    files = {_module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        tree = ast.parse(path.read_text())
        guarded = [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]
        skipped = {id(n) for block in guarded for n in ast.walk(block)}
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    candidate = f"{target}.{alias.name}"
                    deps.add(candidate if candidate in files else target)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in files and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one(tmp_path):
    """The check above can fail: a package with a -> b -> a (b's import inside a function)."""
    pkg = tmp_path / "drawnet"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import x\n")
    assert find_cycle(import_graph(pkg)) == ["drawnet.a", "drawnet.b", "drawnet.a"]


def test_checkpoints_are_loaded_through_the_kind_registry(tmp_path):
    from drawnet import kinds
    from drawnet.checkpoint import load_model, save_checkpoint
    from drawnet.config import DRAWConfig
    from drawnet.model import DRAW

    assert kinds.names() == ["classifier", "draw"]
    model = DRAW(DRAWConfig(image_shape=(1, 6, 6), T=2, enc_size=4, dec_size=4, z_size=2))
    path = save_checkpoint(tmp_path / "c.safetensors", kind="draw", model=model,
                           model_config=model.config.to_dict(), save_rng=False)
    loaded, _ = load_model(path)
    assert isinstance(loaded, DRAW)
    save_checkpoint(path, kind="gan", model=model, model_config=model.config.to_dict(), save_rng=False)
    with pytest.raises(ValueError, match="unknown model kind 'gan'"):
        load_model(path)


def test_a_config_that_disagrees_with_its_tensors_fails_before_allocating(tmp_path):
    """A checkpoint whose config asks for enc_size=1,000,000 (about 25 GB of weights) is refused
    from the shapes alone, in well under a second, without building the model."""
    import time

    from drawnet.checkpoint import load_model, save_checkpoint
    from drawnet.config import DRAWConfig
    from drawnet.model import DRAW

    model = DRAW(DRAWConfig(image_shape=(1, 6, 6), T=2, enc_size=4, dec_size=4, z_size=2))
    config = model.config.to_dict() | {"enc_size": 1_000_000}
    path = save_checkpoint(tmp_path / "c.safetensors", kind="draw", model=model, model_config=config, save_rng=False)
    start = time.perf_counter()
    with pytest.raises(ValueError, match="does not fit its own configuration"):
        load_model(path)
    assert time.perf_counter() - start < 1.0
