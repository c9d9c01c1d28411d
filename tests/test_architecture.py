"""The package's import rule (docs/architecture.md): imports point one way, from the CLI down to
the kernels; no cycle, function-level imports included; no module over 500 lines; no import of
another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "stdbp"

#: Layers from the bottom up: a module may import from its own layer and the ones below it.
LAYERS = [
    ("stdbp.errors", "stdbp.validation", "stdbp.version"),
    ("stdbp.kernels",),
    ("stdbp.functional", "stdbp.encoding", "stdbp.alpha_psp"),
    ("stdbp.nn",),
    ("stdbp.checkpoint", "stdbp.training.data", "stdbp.training.augment"),
    ("stdbp.training", "stdbp.sim", "stdbp.interop"),
    ("stdbp.paper", "stdbp.bench"),
    ("stdbp.cli", "stdbp.__main__"),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _layer(module: str) -> int:
    best, rank = "", -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > len(best):
                best, rank = prefix, index
    if rank < 0:
        raise AssertionError(f"{module} is in no layer of tests/test_architecture.py: add it")
    return rank


def _imports(module: str, path: Path) -> list[tuple[str, str | None, int]]:
    """``(imported module, imported name or None, line)`` for every import of a stdbp module in
    ``module``, at any depth (function-level imports count)."""
    is_package = path.name == "__init__.py"
    found: list[tuple[str, str | None, int]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names if alias.name.split(".")[0] == "stdbp"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "stdbp":
                continue
            for alias in node.names:
                submodule = f"{target}.{alias.name}"
                found.append(
                    (submodule, None, node.lineno) if submodule in MODULES else (target, alias.name, node.lineno)
                )
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the modules importing it runs, parent packages included (all but ``stdbp`` itself)."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for module, path in MODULES.items():
        for target, _, _ in _imports(module, path):
            parts = target.split(".")
            for depth in range(2, len(parts) + 1):
                parent = ".".join(parts[:depth])
                if parent in MODULES and parent != module and not module.startswith(parent + "."):
                    graph[module].add(parent)
    return graph


def test_every_import_points_down() -> None:
    wrong = []
    for module, path in MODULES.items():
        if module == "stdbp":
            continue  # the public API gathers names from every layer; nothing imports it
        for target, _, line in _imports(module, path):
            if target == "stdbp":
                wrong.append(f"{module}:{line} imports the package root; import from the module that defines the name")
            elif _layer(target) > _layer(module):
                wrong.append(f"{module}:{line} imports {target}, a layer above it")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt) :] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_private_names_across_modules() -> None:
    wrong = [
        f"{module}:{line} imports {name} from {target}"
        for module, path in MODULES.items()
        for target, name, line in _imports(module, path)
        if name is not None and name.startswith("_") and not name.startswith("__") and target != module
    ]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_small(module: str) -> None:
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= 500, f"{module} has {lines} lines; split it by concept"


def test_the_rule_catches_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: an import from a higher layer is reported."""
    fake = tmp_path / "stdbp" / "kernels" / "bad.py"
    fake.parent.mkdir(parents=True)
    fake.write_text("def f():\n    from ..training.loop import train\n")
    imports = _imports("stdbp.kernels.bad", fake)
    assert imports == [("stdbp.training.loop", "train", 2)]
    assert _layer(imports[0][0]) > _layer("stdbp.kernels.bad")


def test_the_graph_sees_function_level_imports() -> None:
    graph = _graph()
    assert "stdbp.kernels" in graph["stdbp.functional"]
    assert "stdbp.kernels.numba_linear" in graph["stdbp.kernels.numba_autograd"]  # imported inside functions
    assert "stdbp.training" in graph["stdbp.cli"]  # the parent package runs too
