"""The import contract of the package, read from the source (AST) of every module, nothing imported.

Layers, lowest first: the base (config, progress, slices, metrics), storage (the ``io`` subpackage: stacks,
outputs, ngff, atomic, chunks, units, the training-set format and its export, the work store, overlays, sample
data), models, inference, training, and on top the two front ends, the CLI and ``_napari``. A layer is a
subpackage, except ``models.bioimageio.export``, which writes a package with test tensors made by inference code
and so sits in the inference layer, beside the loader it pairs with. A module may import its own layer and the
ones below, never one above; there are no import cycles; and only ``_napari`` imports a GUI toolkit.
Module-level and function-level (deferred) imports are collected separately: both must respect the layers;
cycles through module-level imports would fail at import time and must be zero, and deferred ones are counted
and must be zero too (a deferred import that closes a cycle only hides it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "napari_neuroedge"
ROOT = "napari_neuroedge"
GUI = ("napari", "qtpy", "magicgui", "superqt", "PyQt5", "PyQt6", "PySide2", "PySide6", "vispy")

#: layer of each module, by its longest listed dotted prefix under the package; higher may import lower
LAYERS = {
    "": 0, "config": 0, "progress": 0, "slices": 0, "metrics": 0,
    "io": 1,
    "models": 2,
    "inference": 3, "models.bioimageio.export": 3,
    "training": 4,
    "cli": 5, "_napari": 5,
}
NAMES = {0: "base", 1: "storage", 2: "models", 3: "inference", 4: "training", 5: "front end"}
STORAGE = ("io",)


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package ``__init__``)."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = [ROOT, *path.relative_to(PACKAGE).with_suffix("").parts]
        is_pkg = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_pkg else parts)] = (path, is_pkg)
    return out


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The longest prefix of ``name`` that is one of our modules (None: a third-party import)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in MODULES:
        parts.pop()
    return ".".join(parts) if parts else None


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_pkg: bool) -> list[str]:
    """Absolute names a statement imports (``from a import b`` counts ``a.b`` when that is a module)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = node.module or ""
    if node.level:
        pkg = module.split(".") if is_pkg else module.split(".")[:-1]
        pkg = pkg[:len(pkg) - (node.level - 1)]
        base = ".".join(pkg + ([node.module] if node.module else []))
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


def _imports() -> dict[str, dict[str, list[str]]]:
    """module -> {"module": [imported names], "function": [...]} (function: inside a def, run when called)."""
    found: dict[str, dict[str, list[str]]] = {}
    for module, (path, is_pkg) in MODULES.items():
        kinds: dict[str, list[str]] = {"module": [], "function": []}

        def visit(node: ast.AST, kind: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    kinds[kind].extend(_targets(child, module, is_pkg))
                else:
                    deferred = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                    visit(child, "function" if deferred else kind)

        visit(ast.parse(path.read_text(), str(path)), "module")
        found[module] = kinds
    return found


IMPORTS = _imports()


def _graph(kinds: tuple[str, ...]) -> nx.DiGraph:
    graph = nx.DiGraph()
    graph.add_nodes_from(MODULES)
    for module, by_kind in IMPORTS.items():
        for kind in kinds:
            for name in by_kind[kind]:
                target = _owner(name)
                if target is not None and target != module:
                    graph.add_edge(module, target)
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")[1:]
    while parts and ".".join(parts) not in LAYERS:
        parts.pop()
    key = ".".join(parts)
    if key not in LAYERS or (key == "" and module != ROOT):
        raise AssertionError(f"{module}: not in the import contract's LAYERS; add it to its layer")
    return LAYERS[key]


def _cycles(graph: nx.DiGraph) -> list[list[str]]:
    return sorted(sorted(c) for c in nx.strongly_connected_components(graph) if len(c) > 1)


def test_the_contract_sees_every_module_and_import() -> None:
    assert len(MODULES) > 60 and all(_layer(m) in NAMES for m in MODULES)
    assert (f"{ROOT}.inference.pipeline", f"{ROOT}.inference.oom") in _graph(("module",)).edges
    assert (f"{ROOT}.cli", f"{ROOT}.inference.files") in _graph(("function",)).edges
    assert _cycles(nx.DiGraph([("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")])) == [["a", "b", "c"]]
    assert [_layer(f"{ROOT}.{m}") for m in ("slices", "io.stacks", "models.bioimageio.load",
                                            "models.bioimageio.export", "training.calibration")] == [0, 1, 2, 3, 4]


def test_no_import_cycles_through_module_level_imports() -> None:
    assert _cycles(_graph(("module",))) == []


def test_no_import_cycles_through_deferred_imports_either() -> None:
    """A function-level import that closes a cycle only hides it; the count is reported when it fails."""
    cycles = _cycles(_graph(("module", "function")))
    assert cycles == [], f"{len(cycles)} cycle(s) through deferred imports: {cycles}"


@pytest.mark.parametrize("kind", ["module", "function"])
def test_layers_import_only_downwards(kind: str) -> None:
    """models below inference below training below the CLI and _napari; storage below all of them."""
    wrong = [f"{m} ({NAMES[_layer(m)]}) -> {t} ({NAMES[_layer(t)]})" for m, t in _graph((kind,)).edges
             if _layer(t) > _layer(m)]
    assert wrong == []


def test_front_ends_do_not_import_each_other() -> None:
    edges = _graph(("module", "function")).edges
    cross = [(m, t) for m, t in edges if _layer(m) == 5 and _layer(t) == 5 and m.split(".")[1] != t.split(".")[1]]
    assert cross == []


def test_storage_imports_no_inference_or_training() -> None:
    edges = _graph(("module", "function")).edges
    bad = [(m, t) for m, t in edges if m.split(".")[1] in STORAGE and t.split(".")[1] in ("inference", "training")]
    assert bad == []


def test_io_imports_nothing_above_it() -> None:
    graph = _graph(("module", "function"))
    io = [m for m in MODULES if m == f"{ROOT}.io" or m.startswith(f"{ROOT}.io.")]
    below = {t for m in io for t in graph.successors(m)}
    assert len(io) > 8 and f"{ROOT}.io.atomic" in below
    assert all(_layer(t) <= _layer(f"{ROOT}.io") for t in below), below


def test_only_napari_imports_a_gui_toolkit() -> None:
    bad = sorted({(m, n) for m, by_kind in IMPORTS.items() if not m.startswith(f"{ROOT}._napari")
                  for kind in by_kind.values() for n in kind if n.split(".")[0] in GUI})
    assert bad == []


#: the GUI's state and rules: they, what they import and the packages above them never import a GUI toolkit, so
#: their tests run without Qt
QT_FREE = ("_napari.ledger", "_napari.state", "_napari.text")
#: what the widgets do with layers, without widgets: importing them loads no GUI toolkit (a function that makes a
#: napari colormap or a notification imports napari when it is called)
IMPORTABLE_WITHOUT_QT = ("_napari.tracking", "_napari.training_data", "_napari.actions", "_napari.landing")
WIDGETS = f"{ROOT}._napari.widgets"


def _gui_reached(name: str, kinds: tuple[str, ...]) -> list[tuple[str, str]]:
    """(module, GUI import) pairs that importing ``name`` (and so its packages) reaches through ``kinds``."""
    graph = _graph(kinds)
    module = f"{ROOT}.{name}"
    start = {module} | {".".join(module.split(".")[:k]) for k in range(1, module.count(".") + 1)}
    reach = start | {t for m in start for t in nx.descendants(graph, m)}
    return sorted({(m, n) for m in reach for kind in kinds for n in IMPORTS[m][kind] if n.split(".")[0] in GUI})


@pytest.mark.parametrize("name", QT_FREE)
def test_the_gui_state_imports_no_gui_toolkit(name: str) -> None:
    assert _gui_reached(name, ("module", "function")) == []


@pytest.mark.parametrize("name", IMPORTABLE_WITHOUT_QT)
def test_the_gui_actions_import_without_a_gui_toolkit(name: str) -> None:
    assert _gui_reached(name, ("module",)) == []


def test_widgets_do_not_import_each_other() -> None:
    """A widget module imports the state, the actions and the shared helpers (``widgets.common``, ``widgets.plot``,
    ``widgets.forms``), never another widget."""
    shared = {f"{WIDGETS}.common", f"{WIDGETS}.plot", f"{WIDGETS}.forms", WIDGETS}
    edges = _graph(("module", "function")).edges
    cross = sorted((m, t) for m, t in edges if m.startswith(f"{WIDGETS}.") and t.startswith(f"{WIDGETS}.")
                   and t not in shared and m != t)
    assert cross == []
