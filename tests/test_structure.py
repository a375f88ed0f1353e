"""The package's structure: no import circles (imports inside functions included), the engine below the content,
chapters without torch."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.flow import fingerprint

SOURCE = Path(fingerprint.SOURCE)


def import_graph() -> dict[str, set[str]]:
    """Every package module -> the package modules it imports, anywhere in its source (inside functions too),
    without the ``__init__`` of a package merely passed through on the way to one of its modules."""
    graph = {}
    for path in sorted(SOURCE.rglob("*.py")):
        module = path.relative_to(SOURCE).with_suffix("").as_posix()
        tree = ast.parse(path.read_text())
        found = set()
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom):
                names = fingerprint._resolve(module.split("/")[:-1], node)
                # "from . import x" names the package (its __init__) only as the way to x
                if node.names and all(fingerprint.module_path(n) for n in names[1:]):
                    names = names[1:]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                target = fingerprint.module_path(name)
                if target and target != module:
                    found.add(target)
        graph[module] = found
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_circle():
    graph = import_graph()
    assert len(graph) > 40, "the graph should cover the whole package"
    assert cycles(graph) == []


def test_a_planted_circle_is_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_engine_never_imports_the_content():
    graph = import_graph()
    content = ("compute/", "chapters/")
    for module, targets in graph.items():
        if module.startswith("flow/"):
            assert not [t for t in targets if t.startswith(content)], module
    for module, targets in graph.items():  # the content never imports the runner (it imports the content's stages)
        if module.startswith(("compute/", "influence/", "models/", "corpora/", "neurons/")):
            assert "flow/runner" not in targets and "pipeline" not in targets, module


def without_torch(modules: list[str]) -> subprocess.CompletedProcess:
    """Import ``modules`` one by one in a fresh interpreter, failing at the first that has loaded torch."""
    code = ("import sys, importlib\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "    assert 'torch' not in sys.modules, name\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_chapters_load_without_torch():
    chapters = sorted(p.stem for p in (SOURCE / "chapters").glob("*.py") if not p.stem.startswith("_"))
    assert len(chapters) >= 13
    done = without_torch([f"helpers.chapters.{c}" for c in chapters])
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_module_that_loads_torch_is_caught():
    done = without_torch(["helpers.claims", "helpers.neurons.activations"])
    assert done.returncode != 0 and "helpers.neurons.activations" in done.stderr


@pytest.mark.parametrize("module", ["influence.scores", "influence.subsets", "claims", "analysis", "config",
                                    "compute.finetune", "compute.retrain", "compute.probe", "flow.context"])
def test_light_modules_load_without_torch(module):
    done = without_torch([f"helpers.{module}"])
    assert done.returncode == 0, done.stderr[-2000:]


def test_notebooks_read_their_parameters_from_the_validated_configuration():
    """After ``begin``, a notebook uses ``ctx.cfg``; the injected globals are the unvalidated text (a chart titled from
    the injected ``top_k`` while computing with ``cfg["top_k"]`` could disagree with it)."""
    import nbformat

    from helpers.flow.stage import all_stages

    offenders = []
    for stage in all_stages().values():
        nb = nbformat.read(stage.path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type != "code" or "parameters" in cell.metadata.get("tags", []):
                continue
            source = "\n".join(x for x in cell.source.splitlines() if not x.lstrip().startswith(("%", "!")))
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in stage.params:
                    offenders.append((stage.notebook, node.id))
    assert offenders == []


def test_devices_and_precisions_are_declared_once():
    from helpers import config, runtime
    from helpers.compute import tracin

    assert config.PARAMETERS["device"].allowed() == runtime.DEVICES
    assert config.PARAMETERS["precision"].allowed() == runtime.PRECISIONS
    with pytest.raises(SystemExit):
        tracin.main(["score", "--finetune", "x", "--out", "y", "--device", "tpu"])
    literals = [p for p in SOURCE.rglob("*.py")
                if '"auto", "cpu", "cuda"' in p.read_text() or '"auto", "fp32", "bf16"' in p.read_text()]
    assert [p.name for p in literals] == ["runtime.py"]
