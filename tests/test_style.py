"""Code-shape rules that ruff does not check.

No function in `pipeline/` is longer than 80 lines, counted from its `def` line
to its last line (docstring and comments included): a longer one is where a
behaviour hides that should be its own named piece. Run as a script, this
prints every function's length, longest first.
"""

from __future__ import annotations

import ast
import pathlib
import sys

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "pipeline"
MAX_FUNCTION_LINES = 80


def function_lengths(root: pathlib.Path = PACKAGE) -> list[tuple[int, str]]:
    """(lines, "path:qualified.name") for every function and method under root."""
    lengths = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent)
        tree = ast.parse(path.read_text(), filename=str(path))
        lengths.extend(_lengths_in(tree, f"{relative}:"))
    return sorted(lengths, reverse=True)


def _lengths_in(node: ast.AST, prefix: str) -> list[tuple[int, str]]:
    lengths = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                lengths.append((child.end_lineno - child.lineno + 1, name))
            lengths.extend(_lengths_in(child, f"{name}."))
        else:
            lengths.extend(_lengths_in(child, prefix))
    return lengths


def test_no_function_in_pipeline_is_longer_than_80_lines():
    too_long = [
        f"{name} is {lines} lines"
        for lines, name in function_lengths()
        if lines > MAX_FUNCTION_LINES
    ]
    assert not too_long, f"over {MAX_FUNCTION_LINES} lines: " + "; ".join(too_long)


def test_the_length_check_sees_nested_functions_and_methods():
    names = {name for _, name in function_lengths()}
    assert "pipeline/config.py:config_from_flags" in names
    assert "pipeline/runs/rundir.py:RunDir.read_record" in names
    assert "pipeline/training/steps.py:make_train_loop.train_loop" in names


if __name__ == "__main__":
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    for lines, name in function_lengths():
        if lines > limit:
            print(f"{lines:4d}  {name}")
