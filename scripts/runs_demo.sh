#!/usr/bin/env bash
# The runs behind docs/run-tracking.md: a copy of this package committed in a fresh
# git repository (under $1, default /tmp/runs-demo), three short logreg runs
# (one on a dirty tree, one re-run on the next commit), then the run list,
# two diffs and pipeline-compare, as printed there.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin="$here/.venv/bin"
demo=${1:-/tmp/runs-demo}
rm -rf "$demo" && mkdir -p "$demo/repo"
cd "$demo/repo"
git init -q -b main && git config user.email demo@example.com && git config user.name demo
printf '__pycache__/\n' > .gitignore
cp -r "$here/pipeline" . && find pipeline -name __pycache__ -prune -exec rm -rf {} +
git add -A && git commit -qm "the pipeline"
train() { PYTHONPATH="$demo/repo" "$bin/python" -m pipeline.cli.train "$@" > /dev/null; }
flags=(--model=logreg --optimizer=sgd --batch_size=32 --steps=300 --eval_every=100
       --checkpoint_every=0 --histogram_every=0 --image_count=0 --noprojector
       --print_every=0 --logdir="$demo/logs")
train "${flags[@]}" --learning_rate=0.1 --run_name=baseline --tag=baseline \
  --note="logreg, SGD 0.1: the tutorial's setting"
echo "# an experiment in progress" >> pipeline/models.py
train "${flags[@]}" --learning_rate=0.05 --run_name=half-lr
git commit -qam "models: keep the experiment"
PYTHONPATH="$demo/repo" "$bin/python" -m pipeline.cli.train --rerun="$demo/logs/baseline" \
  --logdir="$demo/logs" --run_name=baseline-again 2>&1 | grep warning || true
cd "$demo"
set -x
"$bin/pipeline-runs" tag logs/half-lr exp1
"$bin/pipeline-runs" list logs --notes
"$bin/pipeline-runs" diff logs/baseline logs/half-lr
"$bin/pipeline-runs" diff logs/baseline logs/baseline-again
"$bin/pipeline-compare" logs
"$bin/pipeline-compare" logs --filter='tag==exp1'
