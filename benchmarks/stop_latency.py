"""How long `pipeline-train` takes to stop after SIGTERM (or SIGINT).

The signal handler only sets a flag; the loop acts after the current compiled
chunk (up to 100 steps, shorter when a print/eval/checkpoint boundary comes
first), saves a checkpoint, flushes and exits 143 (130 for SIGINT). This
prints the latency for a chosen chunk length.

    .venv/bin/python benchmarks/stop_latency.py --print_every=100 --model=cnn
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import signal
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn")
    parser.add_argument("--print_every", type=int, default=100)
    parser.add_argument("--signal", default="SIGTERM", choices=["SIGTERM", "SIGINT"])
    parser.add_argument(
        "--delay", type=float, default=1.0, help="seconds after step 2*N"
    )
    args = parser.parse_args()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory() as logdir:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pipeline.cli.train",
                "--flagfile=flags/demo.cfg",
                f"--model={args.model}",
                f"--logdir={logdir}",
                "--run_name=latency",
                "--steps=100000",
                f"--print_every={args.print_every}",
                "--eval_every=0",
                "--histogram_every=0",
                "--checkpoint_every=0",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        target = f"step {2 * args.print_every:>6}/"
        for line in proc.stdout:
            if line.startswith(target):
                break
        time.sleep(args.delay)
        start = time.perf_counter()
        proc.send_signal(getattr(signal, args.signal))
        tail = proc.stdout.read()
        code = proc.wait()
        latency = time.perf_counter() - start
    message = next((x for x in tail.splitlines() if "interrupted by" in x), "")
    step = re.search(r"at step (\d+)", message)
    print(
        f"{args.signal} -> exit {code} in {latency:.2f} s "
        f"(model={args.model}, chunks of <= {min(args.print_every, 100)} steps, "
        f"stopped at step {step.group(1) if step else '?'}, checkpoint saved)"
    )


if __name__ == "__main__":
    main()
