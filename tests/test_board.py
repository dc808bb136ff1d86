"""The real TensorBoard: its data API fills every tab, and inspect --check says so."""

import dataclasses
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import LOGREG, run_cli, scalar_series, train_run

from pipeline.runs import restore
from pipeline.tensorboard import board, budget
from pipeline.tools import evaluate


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("board_logs")
    good = train_run(root, LOGREG, "good").path
    # What `pipeline-eval --run=good` does: PR curves and more into good/eval/.
    restored = restore.open_run(good)
    report, outputs, split = evaluate.evaluate_run(restored)
    evaluate.write_summaries(restored, report, outputs, split)
    with pytest.raises(Exception, match="loss is nan"):
        train_run(root, dataclasses.replace(LOGREG, learning_rate=1e38), "diverged")
    return root


@pytest.fixture(scope="module")
def server(logdir):
    with board.TensorBoardServer(logdir) as tensorboard:
        yield tensorboard


def _last_test_accuracy(run_path):
    return scalar_series(run_path / "test", "accuracy")[-1][1]


def test_server_binds_loopback_on_a_free_port(server):
    assert server.url.startswith("http://127.0.0.1:")
    assert server.running
    assert server.tensorflow is False  # no run here needs it
    # ... and TensorFlow's library is not in the server's memory.
    maps = pathlib.Path(f"/proc/{server.pid}/maps").read_text()
    assert "_pywrap_tensorflow_internal" not in maps


def test_many_event_bytes_ask_for_tensorflow_only_for_the_python_loaders(tmp_path):
    """Past `budget.EVENT_BYTES_WORTH_TENSORFLOW`, TensorFlow's record reader pays its
    import back; the Rust loader (`--load_fast=true/auto`) reads without it."""
    event_file = tmp_path / "run" / "train" / "events.out.tfevents.1.host.1.v2"
    event_file.parent.mkdir(parents=True)
    event_file.touch()
    os.truncate(event_file, budget.EVENT_BYTES_WORTH_TENSORFLOW)  # sparse: no disk
    assert not board.needs_tensorflow(tmp_path)
    os.truncate(event_file, budget.EVENT_BYTES_WORTH_TENSORFLOW + 1)
    assert board.needs_tensorflow(tmp_path)
    assert not board.needs_tensorflow(tmp_path, python_loaders=False)


def test_check_run_finds_every_tab_filled(server, logdir):
    checks = board.check_run(server, "good", logdir / "good", timeout_s=60)
    # Issue 19: Distributions is checked too, and the tabs this run is not
    # expected to fill are listed as skipped with their reason.
    assert [c.tab for c in checks if not c.skipped] == [
        "scalars (test)",
        "scalars (train)",
        "histograms",
        "distributions",
        "images",
        "graphs (op graph)",
        "graphs (conceptual graph)",
        "text",
        "hparams",
        "pr_curves",
    ]
    assert all(c.ok for c in checks), checks
    skipped = {c.tab: c.detail for c in checks if c.skipped}
    assert skipped == {
        "projector": "none written (--noprojector, no learned embedding, or not "
        "finished)",
        "profile": "not traced (--profile_steps)",
        "custom_scalars": "not in a sweep with repeats",
    }


def test_endpoints_serve_the_run(server, logdir):
    board.check_run(server, "good", logdir / "good", timeout_s=60)  # waits for loading
    scalars = server.get("/data/plugin/scalars/tags")
    assert {"loss", "accuracy", "best/accuracy", "best/loss"} <= set(
        scalars["good/test"]
    )
    assert {"loss", "accuracy", "learning_rate"} <= set(scalars["good/train"])
    graphs = server.get("/data/plugin/graphs/info")["good/train"]["tags"]
    assert graphs["keras"]["conceptual_graph"] is True
    assert server.get("/data/plugin/text/tags")["good/train"] == ["model_summary"]
    assert "good/train" in server.get("/data/plugin/images/tags")
    assert "pr_curve/class_0" in server.get("/data/plugin/pr_curves/tags")["good/eval"]


def test_hparams_dashboard_lists_both_runs_with_status_and_metrics(server, logdir):
    board.check_run(server, "good", logdir / "good", timeout_s=60)
    experiment = server.get("/data/plugin/hparams/experiment", {"experimentName": ""})
    infos = {i["name"]: i for i in experiment["hparamInfos"]}
    # Listed first, so the dashboard's default columns include it.
    assert experiment["hparamInfos"][0]["name"] == "learning_rate"
    assert sorted(infos["model"]["domainDiscrete"]) == ["cnn", "logreg", "mlp"]
    groups = server.session_groups()
    assert sorted(g["name"] for g in groups) == [
        f"{logdir.name}/diverged",
        f"{logdir.name}/good",
    ]
    sessions = {s["name"]: s for group in groups for s in group["sessions"]}
    assert set(sessions) == {"good", "diverged"}
    assert sessions["good"]["status"] == "STATUS_SUCCESS"
    assert sessions["diverged"]["status"] == "STATUS_FAILURE"
    values = {
        (m["name"]["group"], m["name"]["tag"]): m["value"]
        for m in sessions["good"]["metricValues"]
    }
    assert values[("test", "accuracy")] == pytest.approx(
        _last_test_accuracy(logdir / "good")
    )
    assert ("test", "best/accuracy") in values
    reason = server.get("/data/plugin/text/tags")
    assert "run_status" in reason["diverged"]


def _inspect(*args):
    return run_cli("pipeline-inspect", *args, timeout=180)


def test_inspect_check_passes_on_a_complete_run(logdir):
    result = _inspect("--check", str(logdir / "good"))
    assert result.returncode == 0, result.stderr
    assert "ok     hparams" in result.stdout
    assert "EMPTY" not in result.stdout


def test_inspect_check_names_the_empty_tab(logdir, tmp_path):
    broken = tmp_path / "nohparams"
    shutil.copytree(logdir / "good", broken)
    for path in broken.glob("*.session_*"):
        path.unlink()
    shutil.copy(next(logdir.glob("*hparams_config")), tmp_path)
    result = _inspect("--check", "--timeout=30", str(broken))
    assert result.returncode == 1
    (line,) = [
        line for line in result.stderr.splitlines() if "pipeline-inspect" in line
    ]
    assert line == (
        f"pipeline-inspect: error: {broken}: empty tabs: "
        "hparams: no session for nohparams"
    )


def test_inspect_rejects_a_directory_that_is_not_a_run(tmp_path):
    result = _inspect("--check", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"pipeline-inspect: error: {tmp_path}: not a run directory (no run.json)"
    )


def _start_board(logdir) -> subprocess.Popen:
    """`pipeline-board` on `logdir`; its first stdout line is the address."""
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.board", f"--logdir={logdir}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return [int(p) for p in children.read().split()]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _tensorboard_servers(pid: int) -> list[int]:
    """The live TensorBoard server processes that `pid` started."""
    return [
        child
        for child in _children(pid)
        if _alive(child)
        and b"pipeline.cli.tensorboard_server"
        in pathlib.Path(f"/proc/{child}/cmdline").read_bytes()
    ]


def test_pipeline_board_prints_a_loopback_address_and_stops_on_ctrl_c(logdir):
    """Ctrl-C stops pipeline-board, whose `TensorBoardServer.stop` ends the
    server and frees its port."""
    process = _start_board(logdir)
    try:
        line = process.stdout.readline()
        assert line.startswith("TensorBoard: http://127.0.0.1:"), line
        url = line.split()[1].rstrip("/")
        with urllib.request.urlopen(
            f"{url}/data/plugins_listing", timeout=30
        ) as answer:
            assert {"scalars", "hparams"} <= set(json.load(answer))
        # TensorBoard's own process loads TensorFlow; pipeline-board does not.
        maps = pathlib.Path(f"/proc/{process.pid}/maps").read_text()
        assert "libtensorflow" not in maps
        [server] = _tensorboard_servers(process.pid)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
        assert not _alive(server)
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", int(url.rsplit(":", 1)[1])))  # raises if held
    finally:
        process.kill()
        process.wait()


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_tensorboard_dies_with_pipeline_board(logdir, signum):
    """kill -9 (or a plain SIGTERM, which skips every `finally`) of
    pipeline-board must not leave its TensorBoard server running."""
    process = _start_board(logdir)
    try:
        line = process.stdout.readline()
        assert line.startswith("TensorBoard: http://127.0.0.1:"), line
        servers = _tensorboard_servers(process.pid)
        assert len(servers) == 1
        process.send_signal(signum)
        process.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(servers[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(servers[0]), "TensorBoard outlived pipeline-board"
    finally:
        process.kill()
        process.wait()
