"""Layers by rule: no import points from a lower layer up to a higher one.

The layers of `pipeline/`, lowest first (declared once, in `LAYERS`):

1. base: `errors`, `streams`, `processes`, `config`, `variants` and
   `runs.provenance` - plain values and the code, package and machine facts
   every layer may read (provenance is the one reader of /proc/cpuinfo,
   which `precision` asks). No TensorFlow.
2. data: the datasets, read into NumPy arrays.
3. models: the Keras models and their precision policy (`models`,
   `precision`).
4. runs: a run's life on disk (`runs/`): its directory, record,
   checkpoints; `runs.restore` builds the run's model to restore it.
5. tensorboard: what TensorBoard reads (`tensorboard/`): event files,
   HParams, the projector; they name runs through `runs/`.
6. training: the loop, its actions and state (`training/`).
7. sweep and tools: what drives training (`sweep/`) and what works on a
   trained run (`tools/`: compare, evaluate, export, predict), side by side;
   `runs.annotations` (pipeline-runs note/tag) rewrites TensorBoard's
   HParams and note files, so it sits here with the tools.
8. cli: the entry points (`cli/`), which may import anything.

A module may import its own layer and every layer below; an import upward
(deferred imports inside functions included) is a back-edge and fails
`test_no_import_points_to_a_higher_layer`. A new module of pipeline/ itself
is a base module unless `LAYERS` names it; a new folder no layer names fails
(it takes a place in `LAYERS` first).

And "no TensorFlow at import", by folder: every module imports without
TensorFlow or Keras except those under `TF_AT_IMPORT` (models, precision,
the training folder and the writers and tools that are TensorFlow code), so a
new module anywhere else is checked without being listed
(`tests/test_imports.py` runs the check).
"""

from __future__ import annotations

import ast
import pathlib

import pytest
from conftest import REPO

# (layer, module prefixes), lowest first; a module belongs to the layer of
# its longest matching prefix.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "base",
        (
            "pipeline",
            "pipeline.errors",
            "pipeline.streams",
            "pipeline.processes",
            "pipeline.config",
            "pipeline.variants",
            "pipeline.runs.provenance",
        ),
    ),
    ("data", ("pipeline.data",)),
    ("models", ("pipeline.models", "pipeline.precision")),
    ("runs", ("pipeline.runs",)),
    ("tensorboard", ("pipeline.tensorboard",)),
    ("training", ("pipeline.training",)),
    (
        "sweep and tools",
        ("pipeline.sweep", "pipeline.tools", "pipeline.runs.annotations"),
    ),
    ("cli", ("pipeline.cli",)),
)

# Modules (or whole folders) that may import TensorFlow or Keras when they
# are imported; every other module of pipeline/ must not. training/'s
# TensorFlow-free modules (distribute, recovery) stay checked through the
# checked modules that import them at the top (cli.train, sweep.runs).
TF_AT_IMPORT = (
    "pipeline.models",
    "pipeline.precision",
    "pipeline.training",
    "pipeline.tensorboard.projector",
    "pipeline.tensorboard.summaries",
    "pipeline.tools.evaluate",
    "pipeline.tools.export",
    "pipeline.sweep.pruning",
)


def module_files(root: pathlib.Path = REPO / "pipeline") -> dict[str, pathlib.Path]:
    """Every module of the package under `root`, by dotted name."""
    files = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        files[".".join(p for p in parts if p != "__init__")] = path
    return files


def imported_modules(path: pathlib.Path, known: set[str]) -> set[str]:
    """The `known` modules that `path` imports anywhere (deferred imports too).

    `from pipeline.runs import rundir` imports the module `pipeline.runs.rundir`;
    `from pipeline.config import FIELDS` imports `pipeline.config`.
    """
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names} & known
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                module = f"{node.module}.{alias.name}"
                found |= {module if module in known else node.module} & known
    return found


def _matches(module: str, prefix: str) -> bool:
    """`module` is `prefix` or inside it (the package `pipeline` only itself)."""
    if prefix == "pipeline":
        return module == prefix
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> int:
    """The index in LAYERS of `module`'s layer (its longest matching prefix)."""
    places = [
        (len(prefix), index)
        for index, (_, prefixes) in enumerate(LAYERS)
        for prefix in prefixes
        if _matches(module, prefix)
    ]
    if places:
        return max(places)[1]
    if module.count(".") == 1 and module.startswith("pipeline."):
        return 0  # a module of pipeline/ itself is a base module unless named
    raise AssertionError(f"{module}: no layer in LAYERS names it")


def back_edges(files: dict[str, pathlib.Path]) -> list[str]:
    """Every import from a module to a module of a higher layer, as text."""
    found = []
    for name, path in sorted(files.items()):
        for target in sorted(imported_modules(path, set(files)) - {name}):
            if layer_of(target) > layer_of(name):
                found.append(
                    f"{name} ({LAYERS[layer_of(name)][0]}) imports "
                    f"{target} ({LAYERS[layer_of(target)][0]})"
                )
    return found


def tf_free_modules() -> list[str]:
    """Every module of pipeline/ that TF_AT_IMPORT does not name."""
    return [
        name
        for name in module_files()
        if not any(_matches(name, prefix) for prefix in TF_AT_IMPORT)
    ]


def test_no_import_points_to_a_higher_layer():
    assert back_edges(module_files()) == []


def test_every_declared_name_is_a_module_or_folder_of_pipeline():
    names = set(module_files())
    declared = [p for _, prefixes in LAYERS for p in prefixes] + list(TF_AT_IMPORT)
    assert [p for p in declared if p not in names] == []


@pytest.mark.parametrize(
    ("where", "source", "expected"),
    [
        # A back-edge at module level and a deferred one are both found.
        (
            "pipeline/models_helper.py",
            "from pipeline.training import loop\n",
            ["pipeline.models_helper (base) imports pipeline.training.loop (training)"],
        ),
        (
            "pipeline/runs/late.py",
            "def f():\n    from pipeline.tensorboard import hparams\n",
            [
                "pipeline.runs.late (runs) imports pipeline.tensorboard.hparams "
                "(tensorboard)"
            ],
        ),
        # Downward and sideways imports are the rule, not a finding.
        ("pipeline/cli/extra.py", "from pipeline.training import loop\n", []),
        ("pipeline/tools/extra.py", "import pipeline.sweep.space\n", []),
    ],
)
def test_a_back_edge_fails_the_rule(tmp_path, where, source, expected):
    """The rule on a copy of pipeline/'s modules plus one synthetic module."""
    files = module_files()
    extra = tmp_path / where
    extra.parent.mkdir(parents=True)
    extra.write_text(source)
    name = where.removesuffix(".py").replace("/", ".")
    files[name] = extra
    assert back_edges(files) == expected


def test_a_module_no_layer_names_fails():
    assert layer_of("pipeline.new_leaf") == 0
    with pytest.raises(AssertionError, match="pipeline.new_folder.x: no layer"):
        layer_of("pipeline.new_folder.x")
