"""End-to-end: a tiny sweep, `pipeline-inspect --check`, headless Chromium screenshots.

Run by `make e2e` (which installs Debian's `chromium` if missing). Trains two
tiny MLP runs with `pipeline-sweep`, checks them through TensorBoard's data
API, serves them with the real TensorBoard and saves screenshots of its
Scalars and HParams dashboards under docs/. Exits non-zero if any step fails
or a screenshot comes out blank.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

from PIL import Image

from pipeline.tensorboard import board

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1800,900",
]
TRAIN_FLAGS = [
    "--model=mlp",
    "--dataset=mnist_sample",
    "--hidden_layers=2",
    "--hidden_units=30",
    "--optimizer=adam",
    "--steps=200",
    "--eval_every=50",
    "--log_every=10",
    "--histogram_every=100",
    "--checkpoint_every=0",
    "--print_every=0",
]


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def screenshot(chromium: str, url: str, out: pathlib.Path, budget_ms: int) -> None:
    """Saves a PNG of `url` and shrinks it to a 256-colour palette."""
    with tempfile.TemporaryDirectory(prefix="e2e-chromium-") as profile:
        raw = pathlib.Path(profile) / "shot.png"
        command = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}/user",
            f"--virtual-time-budget={budget_ms}",
            f"--screenshot={raw}",
            url,
        ]
        print("+", " ".join(command), flush=True)
        subprocess.run(command, check=True, timeout=180, capture_output=True)
        with Image.open(raw) as image:
            colours = image.convert("RGB").getcolors(maxcolors=1_000_000) or []
            if len(colours) < 20:
                raise SystemExit(f"e2e: {url} rendered blank ({len(colours)} colours)")
            image.convert("RGB").quantize(colors=256).save(out, optimize=True)
    print(
        f"saved {out.relative_to(ROOT)} ({out.stat().st_size // 1024} KiB)", flush=True
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", default=str(ROOT / "build" / "e2e"))
    parser.add_argument("--docs", default=str(ROOT / "docs"))
    parser.add_argument("--budget_ms", type=int, default=15_000)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit(
            "e2e: chromium not found (make e2e installs Debian's chromium)"
        )

    workdir = pathlib.Path(args.workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    logdir = workdir / "logs"
    bin_dir = pathlib.Path(sys.executable).parent
    started = time.monotonic()
    run(
        [
            str(bin_dir / "pipeline-sweep"),
            *TRAIN_FLAGS,
            f"--logdir={logdir}",
            "--grid=learning_rate=0.01,0.001",
            "--sweep_name=e2e",
            "--parallel=2",
        ]
    )
    run(
        [
            str(bin_dir / "pipeline-inspect"),
            "--check",
            str(logdir / "e2e" / "learning_rate=0.01,seed=0"),
        ]
    )

    docs = pathlib.Path(args.docs)
    docs.mkdir(exist_ok=True)
    with board.TensorBoardServer(logdir / "e2e", load_fast="false") as server:
        print(f"TensorBoard {server.url}", flush=True)
        # Wait until both runs are loaded, so the screenshots show both.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            sessions = [s for g in server.session_groups() for s in g["sessions"]]
            if len(sessions) == 2 and all(s.get("metricValues") for s in sessions):
                break
            time.sleep(1)
        else:
            raise SystemExit("e2e: TensorBoard did not list both runs in 60 s")
        screenshot(
            chromium,
            f"{server.url}/#scalars",
            docs / "tensorboard-scalars.png",
            args.budget_ms,
        )
        screenshot(
            chromium,
            f"{server.url}/#hparams",
            docs / "tensorboard-hparams.png",
            args.budget_ms,
        )
    print(f"e2e: ok in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
