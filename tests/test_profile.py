"""--profile_steps=A,B: a tf.profiler trace of those steps, in the Profile tab."""

import dataclasses
import gzip
import json
import re
import time
import urllib.parse
import urllib.request

import pytest
from conftest import TINY, run_cli, train_run

from pipeline.config import ConfigError, validate
from pipeline.tensorboard import board


@pytest.fixture(scope="module")
def profiled(tmp_path_factory):
    config = dataclasses.replace(
        TINY, model="mlp", steps=20, steps_per_loop=10, profile_steps=(6, 9)
    )
    return train_run(tmp_path_factory.mktemp("logs"), config, "profiled")


@pytest.fixture(scope="module")
def server(profiled):
    """One TensorBoard on the profiled run's logdir, for the tests that ask it."""
    with board.TensorBoardServer(profiled.path.parent) as tensorboard:
        yield tensorboard


def get(server, path):
    """The profile plugin answers gzip-compressed JSON."""
    with urllib.request.urlopen(server.url + path, timeout=30) as response:
        body = response.read()
        if response.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
    return body.decode()


def test_the_trace_lands_in_the_train_directory(profiled):
    (trace,) = (profiled.path / "train" / "plugins" / "profile").glob("*/*.xplane.pb")
    assert trace.stat().st_size > 10_000
    assert (
        f"profile: steps 6-9 traced into {profiled.path / 'train'} "
        "(TensorBoard's Profile tab)"
    ) in profiled.lines
    # Every step's scalars are still written, at their own steps.
    assert profiled.result.step == 20


def test_the_profile_tab_lists_the_run(server):
    assert server.get("/data/plugins_listing")["profile"]["enabled"] is True
    deadline = time.monotonic() + 60
    while "profiled/train/" not in get(server, "/data/plugin/profile/runs"):
        assert time.monotonic() < deadline, "the Profile tab lists no run"
        time.sleep(0.5)


def test_no_trace_by_default(tmp_path):
    run = train_run(tmp_path, dataclasses.replace(TINY, steps=5), "plain")
    assert not (run.path / "train" / "plugins").exists()


def test_a_window_past_the_last_step_is_refused():
    with pytest.raises(ConfigError, match=r"--profile_steps=5,30 ends after"):
        validate(dataclasses.replace(TINY, steps=20, profile_steps=(5, 30)))


def test_the_overview_page_shows_the_step_time(server):
    """Its default tool: a step time, not "No step marker observed" (issue 19)."""
    deadline = time.monotonic() + 60
    while "profiled/train/" not in (runs := get(server, "/data/plugin/profile/runs")):
        assert time.monotonic() < deadline, "the Profile tab lists no run"
        time.sleep(0.5)
    (run,) = json.loads(runs)
    (host,) = json.loads(get(server, f"/data/plugin/profile/hosts?{_query(run)}"))
    query = _query(run, host=host["hostname"])
    overview = get(server, f"/data/plugin/profile/data?{query}")
    assert "No step marker observed" not in overview
    (average,) = re.findall(r'"steptime_ms_average": ?"([\d.]+)"', overview)
    assert float(average) > 0


def _query(run, **more):
    return urllib.parse.urlencode({"run": run, "tag": "overview_page", **more})


def test_inspect_checks_the_overview_step_time(profiled):
    result = run_cli(
        "pipeline-inspect", "--check", "profiled", cwd=profiled.path.parent, timeout=240
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].endswith(" on .")  # paths relative to where it was called
    (profile,) = [line for line in lines if line.split()[1] == "profile"]
    assert re.fullmatch(
        r"ok     profile +session profiled/train/\S+: Overview step time [\d.]+ ms",
        profile,
    )
    assert float(profile.split()[-2]) > 0
    (distributions,) = [line for line in lines if line.split()[1] == "distributions"]
    assert distributions.startswith("ok ")
