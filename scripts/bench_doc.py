"""Puts `make bench`'s output into docs/performance.md's "Results" section.

    .venv/bin/python scripts/bench_doc.py      # `make bench` runs it at its end

Replaces the fenced block under "## Results" with build/bench/bench.txt
(whose first line names the commit, time, cores and load average it ran
under), so the figures on that page are always one run's real output. The
per-window lines of the throughput benchmark are left out (the file keeps
them).
"""

from __future__ import annotations

import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEADING = "## Results\n"
FENCE = "```\n"


def main() -> int:
    bench = ROOT / "build" / "bench" / "bench.txt"
    page = ROOT / "docs" / "performance.md"
    if not bench.is_file():
        print(f"bench_doc: error: {bench} not found; run `make bench` first")
        return 1
    text = page.read_text()
    start = text.index(HEADING) + len(HEADING)
    first = text.index(FENCE, start)
    last = text.index(FENCE, first + len(FENCE)) + len(FENCE)
    lines = bench.read_text().rstrip("\n").splitlines()
    output = "\n".join(line for line in lines if not line.startswith("  window "))
    block = f"{FENCE}$ make bench\n{output}\n{FENCE}"
    page.write_text(text[:first] + block + text[last:])
    print(f"bench_doc: {page.relative_to(ROOT)} updated from {bench.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
