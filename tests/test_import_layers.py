"""Imports point down: no module imports a layer above its own, and no two modules import each other.

The import graph of ``fastssl/`` (and of the top-level ``kernels/``, installed as ``fastssl.kernels``)
is read with ``ast`` — module-level imports and the ones inside functions alike, since a deferred
import is still a dependency (it only hides a cycle until the call). Nothing is imported, so the
check costs a parse of each file.

One edge per ``import``/``from ... import`` naming a fastssl module: ``from fastssl.x import y`` is an
edge to ``fastssl.x.y`` when that is a module, else to ``fastssl.x``. Python also runs a package's
``__init__`` before any of its submodules; those implicit edges are not counted (an ``__init__`` that
re-exports its own submodules would otherwise be a cycle by construction).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: Top to bottom. A module may import its own layer and any layer below it, never one above.
#: A module belongs to the layer of its longest matching prefix.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("fastssl.train",),  # the CLI: parses arguments, runs the engine
    ("fastssl.engine",),  # DeepSpeed engine, set-up checks that need data or ranks, loop, checkpoints
    ("fastssl.report",),  # plots and summarises metrics.jsonl (train and the loop call it)
    # The typed config: each layer's section model assembled, plus the checks that need the whole.
    ("fastssl.config", "fastssl.config_paths", "fastssl.config_pairs", "fastssl.config_deepspeed"),
    ("fastssl.eval",),  # kNN, linear probe, export
    ("fastssl.methods",),  # one file per method + the registry
    ("fastssl.data",),  # batches and crop specs (which methods declare), the data pipelines
    ("fastssl.models",),  # encoders, heads, EMA targets and their schedules
    ("fastssl.ops",),  # differentiable ops: custom-op registration and dispatch
    ("fastssl.kernels",),  # Triton kernels and launchers (the top-level kernels/ folder)
    ("fastssl.config_base",),  # Section and ConfigError: what every layer's config section needs
    ("fastssl", "fastssl._compat"),  # the package itself: the torchvision shim
)


def _modules() -> dict[str, Path]:
    found = {}
    for top, prefix in (("fastssl", ("fastssl",)), ("kernels", ("fastssl", "kernels"))):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = list(prefix) + list(path.relative_to(ROOT / top).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: dict) -> list[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:  # relative: from the module's package, one level up per extra dot
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[: len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        names = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
    out = []
    for name in names:
        while name not in modules and "." in name:  # fastssl.x.function -> fastssl.x
            name = name.rsplit(".", 1)[0]
        if name in modules:
            out.append(name)
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported fastssl module: line of the first import}."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, module, path.name == "__init__.py", modules):
                    if target != module:
                        graph[module].setdefault(target, node.lineno)
    return graph


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    assert rank is not None, f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}"
    return rank


def back_arrows(graph) -> list[str]:
    return [f"{a}:{line} imports {b} (layer {LAYERS[layer_of(b)][0]} is above {LAYERS[layer_of(a)][0]})"
            for a, targets in sorted(graph.items()) for b, line in sorted(targets.items())
            if layer_of(b) < layer_of(a)]


def cycles(graph) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_walk_sees_the_package():
    graph = import_graph()
    assert "fastssl.train" in graph and "fastssl.kernels" in graph and "fastssl.ops.contrastive" in graph
    assert "fastssl.methods.simclr" in graph["fastssl.methods.registry"]  # module level
    assert "fastssl.models.encoder" in graph["fastssl.config"]  # inside a function (a validator)
    for module in graph:
        layer_of(module)  # every module has a layer


def test_imports_point_down():
    arrows = back_arrows(import_graph())
    assert not arrows, "imports pointing up a layer:\n" + "\n".join(arrows)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checks_catch_a_back_arrow_and_a_cycle():
    graph = {"fastssl.ops.a": {"fastssl.methods.b": 1}, "fastssl.methods.b": {"fastssl.ops.a": 2}}
    assert back_arrows(graph) == ["fastssl.ops.a:1 imports fastssl.methods.b (layer fastssl.methods is above fastssl.ops)"]
    assert cycles(graph) == [["fastssl.methods.b", "fastssl.ops.a"]]
