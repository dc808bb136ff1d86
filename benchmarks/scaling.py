"""The same job under --strategy=default, mirrored (2 logical CPUs) and 2 workers.

Runs real `pipeline-train` processes (two at once for multi_worker, on
127.0.0.1 ports) and prints each variant's wall time, examples/s and final
weights digest (equal digests: the replicas computed the same model).

    .venv/bin/python benchmarks/scaling.py [--model=mlp] [--steps=500]
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
import time

from absl import app, flags

REPO = pathlib.Path(__file__).resolve().parents[1]
_MODEL = flags.DEFINE_enum("model", "mlp", ["logreg", "mlp", "cnn"], "Model family.")
_STEPS = flags.DEFINE_integer("steps", 500, "Training steps per run.", lower_bound=1)


def _job(logdir: str, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline.cli.train",
        f"--model={_MODEL.value}",
        f"--steps={_STEPS.value}",
        "--batch_size=128",
        "--eval_every=0",
        "--histogram_every=0",
        "--checkpoint_every=0",
        "--print_every=0",
        f"--logdir={logdir}",
        f"--run_name={name}",
        *extra,
    ]


def _done_line(out: str) -> str:
    lines = [line for line in out.splitlines() if line.startswith("done: ")]
    if not lines:
        raise SystemExit(f"no result:\n{out[-2000:]}")
    return lines[-1]


def _field(line: str, key: str) -> str:
    return line.split(key, 1)[1].split()[0]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def main(argv: list[str]) -> None:
    del argv
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    rows = []
    with tempfile.TemporaryDirectory() as logdir:
        for name, extra in [
            ("default", []),
            ("mirrored-2cpu", ["--strategy=mirrored", "--cpu_devices=2"]),
        ]:
            start = time.perf_counter()
            proc = subprocess.run(
                _job(logdir, name, *extra),
                capture_output=True,
                text=True,
                env=env,
                cwd=REPO,
                check=False,
            )
            rows.append((name, time.perf_counter() - start, _done_line(proc.stdout)))
        cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
        start = time.perf_counter()
        workers = [
            subprocess.Popen(
                _job(logdir, "multi-worker-2", "--strategy=multi_worker"),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=REPO,
                env=dict(
                    env,
                    TF_CONFIG=json.dumps(
                        {"cluster": cluster, "task": {"type": "worker", "index": i}}
                    ),
                ),
            )
            for i in range(2)
        ]
        outs = [w.communicate(timeout=900)[0] for w in workers]
        wall = time.perf_counter() - start
        rows.append(("multi-worker-2 (chief)", wall, _done_line(outs[0])))
        rows.append(("multi-worker-2 (worker 1)", wall, _done_line(outs[1])))
    print(
        f"{_MODEL.value}, {_STEPS.value} steps, global batch 128, "
        f"{os.cpu_count()} cores"
    )
    print(
        f"{'variant':<27}{'process wall s':>15}{'train wall s':>13}"
        f"{'examples/s':>12}  weights"
    )
    for name, wall, line in rows:
        print(
            f"{name:<27}{wall:>15.1f}{float(_field(line, 'wall ')[:-1]):>13.1f}"
            f"{_field(line, 's  '):>12}  {_field(line, 'weights ')}"
        )


if __name__ == "__main__":
    app.run(main)
