"""Import rules: the TensorFlow-free modules stay free of it, and no import circle.

Bad flags, missing runs and corrupt data files are reported in well under a
second because the entry points, the config, the errors, the run records and
the data readers import no TensorFlow (or Keras) until training starts. A new
module-level import that pulls TensorFlow into one of them fails here.
"""

from __future__ import annotations

import ast
import pathlib
import pkgutil
import subprocess
import sys

from conftest import REPO

import pipeline

# Whole packages that must import without TensorFlow, and single modules.
TF_FREE_PACKAGES = ("pipeline.cli", "pipeline.runs")
TF_FREE_MODULES = (
    "pipeline",
    "pipeline.config",
    "pipeline.errors",
    "pipeline.data",
    "pipeline.tensorboard.board",
    "pipeline.tensorboard.budget",
    "pipeline.tensorboard.hparams",
    "pipeline.tensorboard.notes",
    "pipeline.tools.compare",
    "pipeline.tools.predict",
    "pipeline.sweep",
    "pipeline.sweep.driver",
    "pipeline.sweep.link",
    "pipeline.sweep.optuna_adapter",
    "pipeline.sweep.runs",
    "pipeline.sweep.space",
    "pipeline.sweep.storage",
    "pipeline.sweep.study",
    "pipeline.sweep.summary",
    "pipeline.sweep.trainer",
    "pipeline.sweep.worker",
    "pipeline.training.distribute",
    "pipeline.training.recovery",
    "pipeline.variants",
)

# Runs in a fresh interpreter: a finder ahead of every other one refuses
# `tensorflow` and `keras` (and records the attempt, in case a caller
# swallows the ImportError), then imports each module named on argv.
_BLOCKED_IMPORT = """
import importlib, sys
attempts = []
class RefuseTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("tensorflow", "keras"):
            attempts.append(name)
            raise ImportError(f"{name} is blocked")
        return None
sys.meta_path.insert(0, RefuseTensorFlow())
for module in sys.argv[1:]:
    importlib.import_module(module)
print("attempted:", ",".join(attempts))
"""


def tf_free_modules() -> list[str]:
    names = list(TF_FREE_MODULES)
    for package in TF_FREE_PACKAGES:
        names.append(package)
        path = REPO / package.replace(".", "/")
        names += [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(path)])]
    return names


def test_tf_free_modules_import_with_tensorflow_blocked():
    modules = tf_free_modules()
    assert "pipeline.cli.train" in modules
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORT, *modules],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "attempted:"


def test_the_blocker_catches_a_tensorflow_import():
    proc = subprocess.run(
        [sys.executable, "-c", _BLOCKED_IMPORT, "pipeline.training.loop"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode != 0
    assert "tensorflow is blocked" in proc.stderr or "keras is blocked" in proc.stderr


def _imports(path: pathlib.Path, known: set[str]) -> set[str]:
    """Pipeline modules that `path` imports anywhere (deferred imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names} & known
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found |= {node.module} & known
            found |= {f"{node.module}.{alias.name}" for alias in node.names} & known
    return found


def test_no_import_circle():
    root = pathlib.Path(pipeline.__file__).parent
    files = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        files[".".join(p for p in parts if p != "__init__")] = path
    graph = {name: _imports(path, set(files)) - {name} for name, path in files.items()}
    circles = []
    done: set[str] = set()

    def visit(name: str, stack: list[str]) -> None:
        for dep in sorted(graph[name]):
            if dep in stack:
                circles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in done:
                visit(dep, [*stack, dep])
        done.add(name)

    for name in sorted(graph):
        visit(name, [name])
    assert circles == []
