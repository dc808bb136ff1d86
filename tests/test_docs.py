"""The docs name only files, flags and programs that exist.

README.md, WORKSPACE.md and every page under docs/ are read as a newcomer
would follow them: a backticked repo path must exist, a relative link must
lead somewhere, every `--flag` must be one some program defines, and every
`pipeline-*` program must be a console script in pyproject.toml. The flags
come from the programs themselves: each console script's module is run with
`cli.start` capturing the flag definer it passes, which then defines the
program's flags on a fresh `FlagValues`, as the entry point does. No
TensorFlow is imported.
"""

from __future__ import annotations

import ast
import functools
import importlib
import pathlib
import re
import subprocess

import pytest
import tomllib
from absl import app, flags
from conftest import REPO

from pipeline import cli
from pipeline.tensorboard import board

DOCS = sorted(
    [REPO / "README.md", REPO / "WORKSPACE.md", *(REPO / "docs").rglob("*.md")]
)

# Names the docs may use although nothing here defines them, each with why.
ALLOWED_FLAGS = {
    "binary",  # git diff --binary: a dirty run's code.diff (docs/run-tracking.md)
    "bind_all",  # TensorBoard's own flag (docs/tensorboard.md, security notes)
    "dist",  # pytest-xdist's --dist (how `make test` schedules files)
    "owner",  # PostgreSQL's createdb --owner (docs/search.md, several machines)
    "pwprompt",  # PostgreSQL's createuser --pwprompt (the same)
    "reload_multifile",  # TensorBoard's own flag, which pipeline-board passes
    "stat",  # git diff --stat, which pipeline-runs diff shows (the same)
}
# Path prefixes that are examples, not files of the repo.
ALLOWED_PATH_PREFIXES = (
    "logs/",  # run directories the programs write (logs/<run>, logs/demo-cnn)
)
# Bare file names (no folder) that are files of a run, not of the repo.
ALLOWED_FILE_NAMES = {"flags.cfg"}

CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\[[^\]\"]*\]\(([^)\s]+)\)")
FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9_]*)")
PROGRAM = re.compile(r"(?<![\w/.-])(pipeline-[a-z]+)\b(?!-)")
PLACEHOLDER = re.compile(r"<[^>]*>|^[A-Z][A-Z0-9_]*(\.[a-z]+)?$")


def _doc_id(path: pathlib.Path) -> str:
    return str(path.relative_to(REPO))


@functools.cache
def _console_scripts() -> dict[str, str]:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    return pyproject["project"]["scripts"]


@functools.cache
def _tracked() -> frozenset[str]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return frozenset(listed)


def _program_flags(module_name: str) -> set[str]:
    """The flags the console script in `module_name` defines, on fresh FlagValues."""
    definers = []
    original = cli.start
    cli.start = lambda prog, define_flags, *args, **kwargs: definers.append(
        define_flags
    )
    try:
        importlib.import_module(module_name).run()
    finally:
        cli.start = original
    flag_values = flags.FlagValues()
    definers[0](flag_values)
    return set(flag_values)


def _defined_in_source(path: pathlib.Path) -> set[str]:
    """Flags a benchmark or script defines (`flags.DEFINE_*("name", ...)`),
    read from its source: benchmarks import TensorFlow at the top."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr.startswith("DEFINE")
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(node.args[0].value)
    return names


@functools.cache
def _known_flags() -> frozenset[str]:
    names = set(ALLOWED_FLAGS)
    for target in _console_scripts().values():
        names |= _program_flags(target.split(":")[0])
    for path in [*(REPO / "benchmarks").glob("*.py"), *(REPO / "scripts").glob("*.py")]:
        names |= _defined_in_source(path)
    app.define_help_flags()  # --help, --helpfull, ... and absl.logging's flags
    names |= set(flags.FLAGS) | {"flagfile", "undefok"}
    # The TensorBoard server program's own option (pipeline/cli/tensorboard_server.py).
    names.add(board.WITHOUT_TENSORFLOW.removeprefix("--"))
    return frozenset(names)


def _is_boolean_negation(name: str, known: frozenset[str]) -> bool:
    return name.startswith("no") and name[2:] in known


def _path_candidates(token: str) -> list[str]:
    """Repo-relative paths a backticked token names (none for other code)."""
    token = token.split()[0].split(":")[0].rstrip(".,;")
    if not token or "://" in token or token.startswith(("/", "~", "$", ".")):
        return []
    if "/" in token:
        top = token.split("/")[0]
        roots = {entry.split("/")[0] for entry in _tracked()}
        return [token] if top in roots else []
    if token.endswith((".py", ".cfg")):
        return [token]
    return []


def _is_placeholder(path: str) -> bool:
    if path.startswith(ALLOWED_PATH_PREFIXES) or path in ALLOWED_FILE_NAMES:
        return True
    return any(PLACEHOLDER.search(part) for part in path.split("/") if part)


def _exists(path: str) -> bool:
    tracked = _tracked()
    if "/" not in path:  # a bare file name: somewhere in the repo
        return any(entry.rsplit("/", 1)[-1] == path for entry in tracked)
    if "*" in path:
        return bool(list(REPO.glob(path.rstrip("/"))))
    stripped = path.rstrip("/")
    return stripped in tracked or any(e.startswith(stripped + "/") for e in tracked)


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_named_files_exist(doc):
    missing = []
    for token in CODE.findall(doc.read_text()):
        for path in _path_candidates(token):
            if not _is_placeholder(path) and not _exists(path):
                missing.append(path)
    assert not missing, f"{_doc_id(doc)} names files that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_relative_links_lead_somewhere(doc):
    broken = [
        target
        for target in LINK.findall(doc.read_text())
        if "://" not in target
        and not target.startswith("#")
        and not (doc.parent / target.split("#")[0]).exists()
    ]
    assert not broken, f"{_doc_id(doc)} links to missing files: {broken}"


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_named_flags_are_defined(doc):
    known = _known_flags()
    unknown = sorted(
        {
            name
            for name in FLAG.findall(doc.read_text())
            if name not in known and not _is_boolean_negation(name, known)
        }
    )
    assert not unknown, f"{_doc_id(doc)} names undefined flags: --{unknown}"


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_named_programs_are_console_scripts(doc):
    scripts = _console_scripts()
    unknown = sorted(set(PROGRAM.findall(doc.read_text())) - set(scripts))
    assert not unknown, f"{_doc_id(doc)} names programs pyproject lacks: {unknown}"


IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+\.png)\)")
CAPTION = re.compile(r"^\*[^*]*`[^`]+`[^*]*\bcommit [0-9a-f]{7,}")


@pytest.mark.parametrize("doc", DOCS, ids=_doc_id)
def test_every_picture_says_which_command_and_commit_made_it(doc):
    lines = doc.read_text().splitlines()
    uncaptioned = [
        image.group(1)
        for i, line in enumerate(lines)
        for image in [IMAGE.search(line)]
        if image and not (i + 1 < len(lines) and CAPTION.match(lines[i + 1]))
    ]
    assert not uncaptioned, (
        f"{_doc_id(doc)}: pictures without a caption line naming the `command` "
        f"and the commit that made them: {uncaptioned}"
    )


def test_the_checks_find_what_they_look_for():
    """The patterns see a file, a flag and a program in the docs at all."""
    text = (REPO / "WORKSPACE.md").read_text()
    assert "pipeline/config.py" in [
        p for token in CODE.findall(text) for p in _path_candidates(token)
    ]
    assert "learning_rate" in FLAG.findall(text)
    assert "pipeline-sweep" in PROGRAM.findall(text)
    assert not _exists("pipeline/no_such_module.py")
    assert "no_such_flag" not in _known_flags()
    assert _is_boolean_negation("noprojector", _known_flags())
