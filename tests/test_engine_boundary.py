"""The boundary between the engine-neutral core and the two engine adapters (issue 21).

The rule, checked on the imports (``ast``; every form: ``import``, ``from ... import``,
relative, inside functions or ``TYPE_CHECKING``, ``importlib.import_module``/``__import__``
with a literal name) of every ``.py`` file in the repository:

1. The adapters never import each other: nothing in ``pipelines/beam/`` imports
   ``pipelines.flink``, nothing in ``pipelines/flink/`` imports ``pipelines.beam``.
2. The rest of ``pipelines/`` (the core: per-window rows and writers, consensus spec, run
   summary, inputs, ...) imports neither adapter, except the entry points that choose an
   engine (``ENTRY_POINTS``: ``aura run``/``validate``/``demo``, ``aura backtest``), and
   those only through the adapters' entry modules (``ENTRY_MODULES``), never an internal.
3. Tests and benches (everything outside ``pipelines/``) may import any adapter module:
   they run the engines and unit-test an adapter's internals.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ADAPTERS = ("pipelines.beam", "pipelines.flink")
ENTRY_POINTS = frozenset({"pipelines/cli.py", "pipelines/backtest/run.py"})
ENTRY_MODULES = frozenset({"pipelines.beam.job", "pipelines.beam.backtest", "pipelines.flink.job"})
SKIP_DIRS = frozenset({"__pycache__", "node_modules", "output"})


def python_files(root: Path) -> Iterator[Path]:
    """Every ``.py`` file under ``root``, without hidden directories (``.git``, ``.venv``),
    caches and symlinked directories."""
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith(".") and x not in SKIP_DIRS)
        yield from (Path(d) / f for f in sorted(files) if f.endswith(".py"))


def module_of(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(root: Path, name: str) -> bool:
    path = root.joinpath(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def imports(path: Path, root: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for each module the file imports; ``from a import b`` is ``a.b`` when
    ``b`` is a module of the repository, else ``a``."""
    rel = path.relative_to(root)
    package = module_of(rel).split(".")
    if rel.name != "__init__.py":
        package = package[:-1]
    source = path.read_bytes()
    if b"beam" not in source and b"flink" not in source:  # no import of an adapter can be there
        return
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package[:len(package) - node.level + 1]
                base = ".".join(up + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{base}.{a.name}" if base else a.name
                yield node.lineno, sub if a.name != "*" and _is_module(root, sub) else base
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            yield node.lineno, node.args[0].value


def adapter_of(module: str) -> str | None:
    return next((a for a in ADAPTERS if module == a or module.startswith(a + ".")), None)


def violations(root: Path) -> list[str]:
    """Every import that breaks the rule (module docstring), as ``path:line: what``."""
    out = []
    for path in python_files(root):
        rel = path.relative_to(root)
        own = adapter_of(module_of(rel))
        for line, target in dict.fromkeys(imports(path, root)):  # once per (line, module)
            other = adapter_of(target)
            if other is None or other == own:
                continue
            where = f"{rel.as_posix()}:{line}: imports {target}"
            if own is not None:
                out.append(f"{where} (the {own} adapter must not import the {other} adapter)")
            elif rel.parts[0] != "pipelines":
                continue  # tests and benches exercise the engines
            elif rel.as_posix() not in ENTRY_POINTS:
                out.append(f"{where} (the core must not import an engine adapter; move what it "
                           "needs out of the adapter)")
            elif target not in ENTRY_MODULES:
                out.append(f"{where} (an entry point imports an adapter only through "
                           f"{', '.join(sorted(ENTRY_MODULES))})")
    return out


def test_the_repository_keeps_the_boundary():
    assert violations(ROOT) == []


def test_the_allowlists_name_what_exists():
    """The entry points and entry modules exist, and each entry point does choose an engine
    (so the allowlist does not outlive its reason)."""
    for rel in ENTRY_POINTS:
        assert (ROOT / rel).is_file(), rel
        assert any(adapter_of(m) for _, m in imports(ROOT / rel, ROOT)), rel
    for mod in ENTRY_MODULES:
        assert _is_module(ROOT, mod), mod


def test_the_scan_covers_both_adapters_and_the_core():
    scanned = {p.relative_to(ROOT).as_posix() for p in python_files(ROOT)}
    for rel in ("pipelines/beam/job.py", "pipelines/flink/window_stage.py", "pipelines/predictions.py",
                "tests/test_engine_boundary.py", "bench/bench_flink.py"):
        assert rel in scanned, rel
    assert not any(p.startswith(".") for p in scanned)


def _tree(root: Path) -> None:
    """A minimal copy of the package layout, every allowed kind of import in it."""
    files = {
        "pipelines/__init__.py": "",
        "pipelines/panes.py": "import os\n",
        "pipelines/beam/__init__.py": "",
        "pipelines/beam/job.py": "from pipelines.beam import predict\n"
                                 "from pipelines.panes import write_pane\n",
        "pipelines/beam/backtest.py": "from . import predict\n",
        "pipelines/beam/predict.py": "from pipelines import panes\n",
        "pipelines/flink/__init__.py": "",
        "pipelines/flink/job.py": "from .window_stage import StageSpec\n",
        "pipelines/flink/window_stage.py": "from pipelines.panes import write_pane\n",
        "pipelines/backtest/__init__.py": "",
        "pipelines/backtest/run.py": "def run():\n"
                                     "    from pipelines.beam.backtest import run_backtest_pipeline\n",
        "pipelines/cli.py": "from pipelines.beam import job\n\n\ndef run():\n"
                            "    from pipelines.flink.job import run_config\n",
        "tests/test_x.py": "from pipelines.beam.predict import x\n"
                           "from pipelines.flink.window_stage import StageSpec\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_a_tree_of_allowed_imports_passes(tmp_path):
    _tree(tmp_path)
    assert violations(tmp_path) == []


@pytest.mark.parametrize("rel,text", [
    ("pipelines/flink/window_stage.py", "from pipelines.beam.predict import PREDICTION_ROW\n"),
    ("pipelines/flink/new.py", "import pipelines.beam.job as j\n"),
    ("pipelines/flink/new.py", "from ..beam import predict\n"),
    ("pipelines/flink/new.py", "from .. import beam\n"),
    ("pipelines/beam/predict.py", "def f():\n    from pipelines.flink import window_stage\n"),
    ("pipelines/beam/new.py", "import importlib\nm = importlib.import_module('pipelines.flink.job')\n"),
    ("pipelines/panes.py", "from pipelines.beam.predict import write_pane\n"),
    ("pipelines/new.py", "from pipelines import flink\n"),
    ("pipelines/new.py", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                         "    from pipelines.beam.job import RunSummary\n"),
    ("pipelines/backtest/new.py", "from ..beam.job import run_batch\n"),
    ("pipelines/cli.py", "def f():\n    from pipelines.beam.predict import read_predictions\n"),
    ("pipelines/backtest/run.py", "from pipelines.flink.window_stage import StageSpec\n"),
])
def test_a_planted_violation_fails(tmp_path, rel, text):
    _tree(tmp_path)
    path = tmp_path / rel
    path.write_text(path.read_text() + text if path.exists() else text)
    found = violations(tmp_path)
    assert len(found) == 1 and found[0].startswith(f"{rel}:"), found
