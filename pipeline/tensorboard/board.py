"""The real TensorBoard server as a child process, and checks through its data API.

`TensorBoardServer` runs TensorBoard's own program (`tensorboard.main`, through
`pipeline.cli.tensorboard_server`, which sets the garbage collector as the
pipeline's programs do, and without TensorFlow unless a run needs it:
`needs_tensorflow`) on a free port (the OS picks one: `--port=0`), reads
the address TensorBoard prints, and stops it with SIGTERM (then SIGKILL) so no
server outlives its caller. `check_run` asks the
server's HTTP data API -- the same endpoints the dashboard's tabs call --
whether every tab a run should fill is filled, which is how "empty tab" bugs
show up for users.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from google.protobuf import text_format
from tensorboard.plugins.projector import metadata as projector_metadata
from tensorboard.plugins.projector import projector_config_pb2

from pipeline import processes
from pipeline.runs import rundir
from pipeline.tensorboard import budget, events

URL_PATTERN = re.compile(r"TensorBoard \S+ at (http://\S+?)/? ")
ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]


# `pipeline.cli.tensorboard_server`'s one option of its own (before
# TensorBoard's): refuse TensorFlow's import.
WITHOUT_TENSORFLOW = "--without_tensorflow"
# What TensorBoard says when it runs without TensorFlow, as it was asked to:
# not news for whoever reads its last lines.
WITHOUT_TENSORFLOW_NOTICES = (
    "TensorFlow installation not found - running with reduced feature set.",
    "Disabling some remote capture features as tensorflow is not available",
)


def needs_tensorflow(logdir: str | os.PathLike, python_loaders: bool = True) -> bool:
    """Whether TensorBoard should load TensorFlow to serve `logdir`.

    Without it TensorBoard reads local files and fills every tab but for one
    thing: a Projector embedding kept in a checkpoint (in a
    `projector_config.pbtxt`, an embedding with no `tensor_path`: runs written
    before `projector.write_projector` wrote tensor files). Checkpoints of
    training runs are not embeddings and need nothing. With `python_loaders`
    (`--load_fast=false`), more than `budget.EVENT_BYTES_WORTH_TENSORFLOW` of
    event files also ask for TensorFlow, whose reader is faster.
    """
    for path in pathlib.Path(logdir).rglob(projector_metadata.PROJECTOR_FILENAME):
        config = projector_config_pb2.ProjectorConfig()
        try:
            text_format.Parse(path.read_text(errors="replace"), config)
        except (OSError, text_format.ParseError):
            continue  # gone or damaged: TensorBoard names what it cannot read
        if any(not embedding.tensor_path for embedding in config.embeddings):
            return True
    return python_loaders and budget.tensorflow_reads_faster([logdir])


class BoardError(rundir.RunDirError):
    """TensorBoard cannot serve the log directory (did not start, died, timed out)."""


class TensorBoardServer:
    """TensorBoard on `logdir` in a child process; use as a context manager.

    Args:
      logdir: Directory TensorBoard serves (runs are its subdirectories).
      host: Interface to bind; loopback unless the caller opens it up.
      port: Port to bind; 0 lets the OS pick a free one.
      load_fast: TensorBoard's `--load_fast` (`false`: the Python loaders).
      extra_args: More `tensorboard` command-line arguments.
      tensorflow: Whether the server loads TensorFlow; None decides when it
        starts (`needs_tensorflow`).
    """

    def __init__(
        self,
        logdir: str | os.PathLike,
        host: str = "127.0.0.1",
        port: int = 0,
        load_fast: str = "false",
        extra_args: tuple[str, ...] = (),
        tensorflow: bool | None = None,
    ):
        self.logdir = pathlib.Path(logdir)
        self.load_fast = load_fast
        self.tensorflow = tensorflow
        self.tensorboard_args = [
            f"--logdir={self.logdir}",
            f"--host={host}",
            f"--port={port}",
            f"--load_fast={load_fast}",
            # A split directory has two growing event files (per-step scalars
            # are written in bulk into their own, `summaries.ScalarEventFile`):
            # the Python loaders follow both only with this (the Rust one does).
            "--reload_multifile=true",
            *extra_args,
        ]
        self.url: str | None = None
        self._process: subprocess.Popen | None = None
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self, timeout_s: float = 90.0) -> str:
        """Starts the server and returns its base URL, e.g. `http://127.0.0.1:4567`."""
        if not self.logdir.is_dir():
            raise BoardError(f"{self.logdir}: log directory not found")
        if self.tensorflow is None:
            self.tensorflow = needs_tensorflow(
                self.logdir, python_loaders=self.load_fast == "false"
            )
        command = [sys.executable, "-m", "pipeline.cli.tensorboard_server"]
        if not self.tensorflow:
            command.append(WITHOUT_TENSORFLOW)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        self._process = subprocess.Popen(
            [*command, *self.tensorboard_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            # A `kill -9` or SIGTERM of this program must not leave the
            # server running (nothing here would stop it).
            preexec_fn=processes.die_with_parent(),
        )
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self._lines):
                match = URL_PATTERN.search(line)
                if match:
                    self.url = match.group(1).rstrip("/")
                    return self.url
            if self._process.poll() is not None:
                self._reader.join(timeout=2)
                tail = " | ".join(line.strip() for line in self._lines[-3:])
                raise BoardError(
                    f"TensorBoard on {self.logdir} exited with status "
                    f"{self._process.returncode}: {tail}"
                )
            time.sleep(0.1)
        self.stop()
        raise BoardError(
            f"TensorBoard on {self.logdir} printed no address in {timeout_s:.0f}s"
        )

    def _read_output(self) -> None:
        assert self._process is not None
        assert self._process.stderr is not None
        for line in self._process.stderr:
            if not any(notice in line for notice in WITHOUT_TENSORFLOW_NOTICES):
                self._lines.append(line)

    def wait(self) -> int:
        """Blocks until the server exits; returns its exit status."""
        assert self._process is not None
        return self._process.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`; waits for the process to go."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if self._reader is not None:
            self._reader.join(timeout=2)

    @property
    def pid(self) -> int | None:
        """The server process's id once started."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def get(self, path: str, body: Any = None, timeout_s: float = 30.0) -> Any:
        """GETs (or POSTs `body` as JSON to) `path` and decodes the JSON answer."""
        if self.url is None:
            raise BoardError("TensorBoard is not started")
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path,
            data=data,
            headers={"Content-Type": "application/json"} if data else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                body = response.read()
                if response.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)  # the Profile plugin's answers
                return json.loads(body.decode())
        except (urllib.error.URLError, OSError) as err:
            raise BoardError(f"{self.url}{path}: {err}") from None

    def session_groups(self) -> list[dict[str, Any]]:
        """The HParams dashboard's rows (every status, up to 10,000 runs)."""
        answer = self.get(
            "/data/plugin/hparams/session_groups",
            {
                "experimentName": "",
                "allowedStatuses": ALL_STATUSES,
                "startIndex": 0,
                "sliceSize": 10_000,
            },
        )
        return answer.get("sessionGroups", [])

    def __enter__(self) -> TensorBoardServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclasses.dataclass(frozen=True)
class TabCheck:
    """One tab's verdict for one run: `detail` says what was found or is missing."""

    tab: str
    ok: bool
    detail: str
    skipped: bool = False


def _expectations(run_path: pathlib.Path) -> dict[str, Any]:
    """Which tabs the run should fill, each with why when it should not.

    A tab maps to True (expected) or to the reason it is not expected, which
    `pipeline-inspect` prints: no tab is skipped silently.
    """
    config = rundir.load_record(run_path).config
    evals = [p for p in run_path.iterdir() if p.is_dir() and p.name.startswith("eval")]
    projector_dirs = [
        p.name
        for p in [run_path / "test", *evals]
        if (p / projector_metadata.PROJECTOR_FILENAME).is_file()
    ]
    bands = run_path.parent / "seed_bands"
    return {
        "train_scalars": int(config.get("log_every", 1)) > 0,
        # Written at the first and last step whatever the interval.
        "histograms": int(config.get("histogram_every", 0)) > 0
        or "--histogram_every=0",
        "images": int(config.get("image_count", 0)) > 0 or "--image_count=0",
        "validation": (run_path / "validation").is_dir(),
        # pipeline-eval writes `eval/` (or `eval_<dataset>_<split>/`).
        "pr_curves": bool(evals) or "no pipeline-eval output",
        "projector": projector_dirs
        or "none written (--noprojector, no learned embedding, or not finished)",
        "profile": (run_path / "train" / "plugins" / "profile").is_dir()
        or "not traced (--profile_steps)",
        "custom_scalars": bands.is_dir() or "not in a sweep with repeats",
    }


def _snapshot(server: TensorBoardServer) -> dict[str, Any]:
    return {
        "plugins": server.get("/data/plugins_listing"),
        "scalars": server.get("/data/plugin/scalars/tags"),
        "histograms": server.get("/data/plugin/histograms/tags"),
        "images": server.get("/data/plugin/images/tags"),
        "graphs": server.get("/data/plugin/graphs/info"),
        "text": server.get("/data/plugin/text/tags"),
        "pr_curves": server.get("/data/plugin/pr_curves/tags"),
        "hparams": server.session_groups(),
        "distributions": server.get("/data/plugin/distributions/tags"),
        "projector": server.get("/data/plugin/projector/runs"),
        "custom_scalars": server.get("/data/plugin/custom_scalars/layout"),
        "profile": server.get("/data/plugin/profile/runs"),
    }


def _judge(
    snapshot: dict[str, Any], run: str, expect: dict[str, Any]
) -> list[TabCheck]:
    """Every tab's verdict for `run` from one snapshot of the server's answers."""
    checks = [
        *_scalar_checks(snapshot, run, expect),
        *_train_tag_checks(snapshot, run, expect),
        *_graph_checks(snapshot, run),
        _text_check(snapshot, run),
        _hparams_check(snapshot, run),
    ]
    optional = {
        "pr_curves": _pr_curve_check,
        "projector": _projector_check,
        "custom_scalars": _custom_scalars_check,
        "profile": _profile_check,
    }
    for tab, check in optional.items():
        if expect[tab] is True or isinstance(expect[tab], list):
            checks.append(check(snapshot, run, expect))
    checks = _note_disabled_tabs(checks, snapshot["plugins"])
    return checks + _skipped(expect)


def _skipped(expect: dict[str, Any]) -> list[TabCheck]:
    """The tabs the run is not expected to fill, each with its reason."""
    tabs = ("histograms", "images", "pr_curves", "projector", "profile")
    tabs += ("custom_scalars",)
    return [
        TabCheck(tab, True, expect[tab], skipped=True)
        for tab in tabs
        if isinstance(expect[tab], str)
    ]


def _verdict(tab: str, ok: bool, found: str, missing: str) -> TabCheck:
    return TabCheck(tab, ok, found if ok else missing)


def _scalar_checks(
    snapshot: dict[str, Any], run: str, expect: dict[str, Any]
) -> list[TabCheck]:
    """Loss and accuracy in every split the run writes."""
    scalars = snapshot["scalars"]
    wanted = {"loss", "accuracy"}
    splits = ["test"] + (["train"] if expect["train_scalars"] else [])
    splits += ["validation"] if expect["validation"] else []
    checks = []
    for split in splits:
        tags = set(scalars.get(f"{run}/{split}", {}))
        checks.append(
            _verdict(
                f"scalars ({split})",
                wanted <= tags,
                f"{len(tags)} tags in {run}/{split}",
                f"no {'/'.join(sorted(wanted - tags))} in {run}/{split}",
            )
        )
    return checks


def _train_tag_checks(
    snapshot: dict[str, Any], run: str, expect: dict[str, Any]
) -> list[TabCheck]:
    """Histograms and images in the train split, where the run's flags ask for them."""
    checks = []
    for tab in ("histograms", "distributions", "images"):
        if expect["histograms" if tab == "distributions" else tab] is True:
            tags = snapshot[tab].get(f"{run}/train", {})
            checks.append(
                _verdict(
                    tab,
                    bool(tags),
                    f"{len(tags)} tags in {run}/train",
                    f"no tags in {run}/train",
                )
            )
    return checks


def _graph_checks(snapshot: dict[str, Any], run: str) -> list[TabCheck]:
    """The op graph (the run-level graph the dashboard opens on) and the
    conceptual (Keras) graph."""
    graph_info = snapshot["graphs"].get(f"{run}/train", {})
    names = [
        t["tag"] for t in graph_info.get("tags", {}).values() if t["conceptual_graph"]
    ]
    return [
        _verdict(
            "graphs (op graph)",
            bool(graph_info.get("run_graph")),
            f"run graph of {run}/train",
            f"no run-level op graph in {run}/train",
        ),
        _verdict(
            "graphs (conceptual graph)",
            bool(names),
            f"tag {names[0]}" if names else "",
            f"no conceptual graph in {run}/train",
        ),
    ]


def _text_check(snapshot: dict[str, Any], run: str) -> TabCheck:
    text = snapshot["text"].get(f"{run}/train", [])
    return _verdict(
        "text", bool(text), f"tags {', '.join(text)}", f"no text tags in {run}/train"
    )


def _hparams_check(snapshot: dict[str, Any], run: str) -> TabCheck:
    """The run's HParams session, with a final test/accuracy metric value."""
    sessions = [
        session
        for group in snapshot["hparams"]
        for session in group.get("sessions", [])
        if session.get("name") == run
    ]
    if not sessions:
        return _verdict("hparams", False, "", f"no session for {run}")
    metrics = {
        f"{m['name'].get('group', '')}/{m['name']['tag']}"
        for s in sessions
        for m in s.get("metricValues", [])
    }
    return _verdict(
        "hparams",
        "test/accuracy" in metrics,
        f"session {run}: {sessions[0].get('status')}, {len(metrics)} metric values",
        f"session {run} has no test/accuracy metric value",
    )


def _projector_check(
    snapshot: dict[str, Any], run: str, expect: dict[str, Any]
) -> TabCheck:
    """Each directory holding a Projector config is a Projector run."""
    wanted = {f"{run}/{name}" for name in expect["projector"]}
    missing = wanted - set(snapshot["projector"])
    return _verdict(
        "projector",
        not missing,
        f"runs {', '.join(sorted(wanted))}",
        f"no Projector for {', '.join(sorted(missing))}",
    )


def _custom_scalars_check(
    snapshot: dict[str, Any], run: str, expect: dict[str, Any]
) -> TabCheck:
    """The sweep's seed bands layout (in the directory served)."""
    layout = snapshot["custom_scalars"]
    titles = [c.get("title") for c in layout.get("category", [])]
    return _verdict(
        "custom_scalars",
        bool(titles),
        f"layout {', '.join(titles)}",
        "no Custom Scalars layout (seed bands) served",
    )


def _profile_check(
    snapshot: dict[str, Any], run: str, expect: dict[str, Any]
) -> TabCheck:
    """A traced session of the run, and whether the Overview measured steps.

    The Overview is the tab's default tool; without step markers it opens on
    "No step marker observed" and 0.0 ms.
    """
    sessions = [r for r in snapshot["profile"] if r.startswith(f"{run}/train/")]
    if not sessions:
        return _verdict("profile", False, "", f"no profile session under {run}/train")
    step_ms = snapshot.get("profile_step_ms", {}).get(sessions[-1])
    return _verdict(
        "profile",
        bool(step_ms),
        f"session {sessions[-1]}: Overview step time {step_ms} ms",
        f"session {sessions[-1]}: the Overview measured no step time",
    )


def profile_step_ms(server: TensorBoardServer, session: str) -> float:
    """The Overview's average step time of a Profile session (0.0: unmeasured)."""
    query = {"run": session, "tag": "overview_page"}
    hosts = server.get("/data/plugin/profile/hosts?" + urllib.parse.urlencode(query))
    if not hosts:
        return 0.0
    query["host"] = hosts[0]["hostname"]
    overview = server.get("/data/plugin/profile/data?" + urllib.parse.urlencode(query))
    found = re.search(r'"steptime_ms_average": ?"([\d.]+)"', json.dumps(overview))
    return float(found.group(1)) if found else 0.0


def _pr_curve_check(
    snapshot: dict[str, Any], run: str, expect: dict[str, Any]
) -> TabCheck:
    """PR curves under any of the run's eval directories (pipeline-eval's)."""
    pr_runs = [r for r in snapshot["pr_curves"] if r.startswith(f"{run}/")]
    return _verdict(
        "pr_curves",
        bool(pr_runs),
        f"runs {', '.join(pr_runs)}",
        f"no PR curves under {run}/",
    )


def _note_disabled_tabs(
    checks: list[TabCheck], listing: dict[str, Any]
) -> list[TabCheck]:
    """A failed check whose plugin TensorBoard lists as disabled says so."""
    return [
        dataclasses.replace(check, detail=check.detail + " (tab disabled)")
        if not check.ok
        and not listing.get(check.tab.split(" ")[0], {}).get("enabled", True)
        else check
        for check in checks
    ]


def check_run(
    server: TensorBoardServer, run: str, run_path: pathlib.Path, timeout_s: float = 60.0
) -> list[TabCheck]:
    """Polls `server` until every tab `run` should fill is filled or data settles.

    Args:
      server: A started server whose logdir holds `run_path`.
      run: The run's name relative to the server's logdir.
      run_path: The run directory (its `run.json` says which tabs to expect).
      timeout_s: Give up waiting for data after this long.

    Returns:
      One `TabCheck` per expected tab, then one `skipped` per tab the run is
      not expected to fill, its `detail` saying why.
    """
    expect = _expectations(run_path)
    deadline = time.monotonic() + timeout_s
    previous = None
    while True:
        snapshot = _snapshot(server)
        if expect["profile"] is True:
            snapshot["profile_step_ms"] = {
                session: profile_step_ms(server, session)
                for session in snapshot["profile"]
                if session.startswith(f"{run}/train/")
            }
        checks = _judge(snapshot, run, expect)
        # An unchanged answer after the run's splits are all listed means the
        # loader has finished: an empty tab is then really empty.
        runs = set(server.get("/data/runs"))
        subdirs = {
            f"{run}/{p.name}" for p in run_path.iterdir() if events.has_event_files(p)
        }
        if events.has_event_files(run_path):
            subdirs.add(run)
        loaded = subdirs <= runs and snapshot == previous
        done = all(c.ok for c in checks)
        if done or loaded or time.monotonic() > deadline:
            return checks
        if not server.running:
            raise BoardError("TensorBoard exited while being checked")
        previous = snapshot
        time.sleep(1.0)
