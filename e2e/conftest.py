"""`make e2e`'s screenshots say which commit they show.

After the session, each `docs/tensorboard-*.png` the browser test rewrote
gets a new caption wherever a page shows it (README.md, WORKSPACE.md,
docs/**/*.md: the `*Screenshot: ...*` line under the image) and a new row in
docs/screenshots.md: `make e2e` and the commit it ran at (marked when the
working tree differed from it outside docs/).
"""

from __future__ import annotations

import datetime
import pathlib
import re
import subprocess
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
MANIFEST = DOCS / "screenshots.md"
STARTED = time.time()
CAPTION = re.compile(r"^\*Screenshot: `make e2e` for commit [^*]*\*$")
IMAGE = re.compile(r"!\[[^\]]*\]\((?:docs/)?(tensorboard-[\w-]+\.png)\)")
ROW = re.compile(r"^\| `docs/(tensorboard-[\w-]+\.png)` \| `make e2e` \| [^|]* \|$")


def _commit() -> str:
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        )

    sha = git("rev-parse", "--short", "HEAD").stdout.strip() or "unknown"
    dirty = git("diff", "--quiet", "HEAD", "--", ".", ":!docs").returncode != 0
    return f"{sha} (+ uncommitted changes)" if dirty else sha


def _recaption(path: pathlib.Path, made: set[str], caption: str) -> None:
    lines = path.read_text().split("\n")
    for i, line in enumerate(lines[:-1]):
        image = IMAGE.search(line)
        if image and image.group(1) in made and CAPTION.match(lines[i + 1]):
            lines[i + 1] = caption
    text = "\n".join(lines)
    if text != path.read_text():
        path.write_text(text)


def pytest_sessionfinish(session, exitstatus):
    made = {
        shot.name
        for shot in DOCS.glob("tensorboard-*.png")
        if shot.stat().st_mtime >= STARTED
    }
    if not made:
        return
    commit = _commit()
    day = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    caption = f"*Screenshot: `make e2e` for commit {commit}, {day}.*"
    for page in [ROOT / "README.md", ROOT / "WORKSPACE.md", *DOCS.rglob("*.md")]:
        _recaption(page, made, caption)
    if MANIFEST.is_file():
        rows = MANIFEST.read_text().rstrip("\n").split("\n")
        listed = {}
        for i, row in enumerate(rows):
            match = ROW.match(row)
            if match:
                listed[match.group(1)] = i
        for name in sorted(made):
            row = f"| `docs/{name}` | `make e2e` | {commit}, {day} |"
            if name in listed:
                rows[listed[name]] = row
            else:
                rows.append(row)
        MANIFEST.write_text("\n".join(rows) + "\n")
