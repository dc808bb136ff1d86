"""Import rules: the TensorFlow-free modules stay free of it, and no import circle.

Bad flags, missing runs and corrupt data files are reported in well under a
second because the entry points, the config, the errors, the run records and
the data readers import no TensorFlow (or Keras) until training starts. A new
module-level import that pulls TensorFlow into one of them fails here. Which
modules may import TensorFlow is declared by folder in `test_layers.py`
(`TF_AT_IMPORT`): every other module is checked.
"""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO
from test_layers import imported_modules, module_files, tf_free_modules

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


def test_no_import_circle():
    files = module_files()
    graph = {
        name: imported_modules(path, set(files)) - {name}
        for name, path in files.items()
    }
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
