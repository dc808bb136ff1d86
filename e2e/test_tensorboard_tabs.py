"""Every TensorBoard tab as a new user first sees it, read from a real browser.

`make e2e` runs this (not `make test`): it trains a demo CNN (with a profiled
step range), evaluates it (PR curves, Projector), runs a small sweep with
repeats (HParams, seed bands in Custom Scalars) and the README's layout (the
three demo runs and a 2-variant x 2-seed sweep in one logdir: HParams shows
the swept flag, one row per variant), serves each with the real
TensorBoard and opens every tab's default view in headless Chromium, driven
by Selenium through Debian's `chromium-driver` (no browser download). Each
tab is read from the DOM, shadow roots included: the visible text must show
the tab's data and no error or "no data" message. A screenshot of each view
goes to `docs/tensorboard-<tab>.png`; log directories are given to
TensorBoard as relative paths, so no machine path shows in them.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

from pipeline import variants
from pipeline.tensorboard import board

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BIN = pathlib.Path(sys.executable).parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
TIMEOUT_S = 90

DEMO_FLAGS = [
    "--flagfile=flags/demo.cfg",
    "--model=cnn",
    "--steps=100",
    "--eval_every=50",
    "--histogram_every=50",
    "--checkpoint_every=50",
    "--print_every=50",
    "--profile_steps=60,62",
]
SWEEP_FLAGS = [
    "--model=mlp",
    "--dataset=mnist_sample",
    "--hidden_layers=1",
    "--hidden_units=32",
    "--optimizer=adam",
    "--steps=60",
    "--eval_every=20",
    "--log_every=10",
    "--histogram_every=0",
    "--checkpoint_every=0",
    "--print_every=0",
    "--grid=learning_rate=0.01,0.001",
    "--repeats=2",
    "--parallel=2",
]
# What TensorBoard shows instead of data: errors and empty-tab messages.
TROUBLE = re.compile(
    r"\berror\b|failed|malformed|exception|no dashboards are active"
    r"|no \S+(?: \S+)? data (?:was|were) found|not found|no data",
    re.IGNORECASE,
)

# Visible text of the page, shadow roots included: a text node counts when it
# is laid out (has client rects) and its element is not hidden.
VISIBLE_TEXT = """
const out = [];
function walk(node) {
  if (node.nodeType === Node.TEXT_NODE) {
    const text = node.textContent.trim();
    if (!text) return;
    const range = node.ownerDocument.createRange();
    range.selectNodeContents(node);
    if (range.getClientRects().length === 0) return;
    const parent = node.parentElement;
    if (parent && !parent.checkVisibility(
        {visibilityProperty: true, opacityProperty: true})) return;
    out.push(text);
    return;
  }
  if (node.nodeType === Node.ELEMENT_NODE) {
    if (['STYLE', 'SCRIPT', 'TEMPLATE', 'NOSCRIPT'].includes(node.tagName)) return;
    if (node.shadowRoot) walk(node.shadowRoot);
    if (node.tagName === 'IFRAME' && node.contentDocument) walk(node.contentDocument);
  }
  for (const child of node.childNodes) walk(child);
}
walk(document);
return out.join(' | ');
"""
# Clicks the visible element whose own text is arguments[0] (shadow roots too).
CLICK_TEXT = """
const wanted = arguments[0];
function find(node) {
  if (node.nodeType === Node.ELEMENT_NODE) {
    const own = Array.from(node.childNodes)
      .filter(c => c.nodeType === Node.TEXT_NODE)
      .map(c => c.textContent.trim()).join(' ').trim();
    if (own === wanted && node.getClientRects().length) return node;
    if (node.shadowRoot) { const hit = find(node.shadowRoot); if (hit) return hit; }
  }
  for (const child of node.childNodes) { const hit = find(child); if (hit) return hit; }
  return null;
}
const hit = find(document);
if (hit) hit.click();
return hit !== null;
"""

# The HParams query pane's checkboxes, shadow roots included: [label, checked].
CHECKBOXES = """
const out = [];
function walk(node) {
  if (node.nodeType === Node.ELEMENT_NODE) {
    if (node.tagName === 'PAPER-CHECKBOX' || node.tagName === 'MAT-CHECKBOX'
        || (node.tagName === 'INPUT' && node.type === 'checkbox')) {
      const checked = node.checked === true || node.hasAttribute('checked')
        || node.getAttribute('aria-checked') === 'true';
      out.push([(node.textContent || '').trim(), checked]);
    }
    if (node.shadowRoot) walk(node.shadowRoot);
  }
  for (const child of node.childNodes) walk(child);
}
walk(document);
return out;
"""


def run(program: str, *args: str) -> str:
    result = subprocess.run(
        [str(BIN / program), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"{program} {args}:\n{result.stdout}{result.stderr}"
    return result.stdout


@pytest.fixture(scope="session")
def logs() -> pathlib.Path:
    """build/e2e/{demo,sweep}, relative to the repository (see module doc)."""
    work = pathlib.Path("build/e2e")
    shutil.rmtree(work, ignore_errors=True)
    demo = subprocess.Popen(  # trains while the sweep does
        [
            str(BIN / "pipeline-train"),
            *DEMO_FLAGS,
            f"--logdir={work / 'demo'}",
            "--run_name=cnn",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    run("pipeline-sweep", *SWEEP_FLAGS, f"--logdir={work}", "--sweep_name=sweep")
    output, _ = demo.communicate(timeout=600)
    assert demo.returncode == 0, output
    run("pipeline-eval", f"--run={work / 'demo' / 'cnn'}")
    return work


@pytest.fixture(scope="session", autouse=True)
def in_repository():
    """Relative log directories (no machine paths on screen) need this cwd."""
    previous = os.getcwd()
    os.chdir(ROOT)
    yield
    os.chdir(previous)


def serve(logdir: pathlib.Path, ready: str):
    """TensorBoard on `logdir` (a relative path), once `ready` lists data."""
    with board.TensorBoardServer(logdir) as server:
        deadline = time.monotonic() + TIMEOUT_S
        while not server.get(ready):
            assert time.monotonic() < deadline, f"{logdir}: {ready} stayed empty"
            time.sleep(0.5)
        yield server


@pytest.fixture(scope="session")
def demo_board(logs):
    yield from serve(logs / "demo", "/data/plugin/projector/runs")


@pytest.fixture(scope="session")
def sweep_board(logs):
    yield from serve(logs / "sweep", "/data/plugin/custom_scalars/layout")


@pytest.fixture
def browser():
    """A fresh headless Chromium per tab (a visited dashboard stays in the DOM)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1600,1000",
        "--hide-scrollbars",
        # WebGL in software, for the Projector and Time Series charts.
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def visible_text(browser) -> str:
    return browser.execute_script(VISIBLE_TEXT)


def wait_for(browser, expected: list[str]) -> str:
    """Polls the visible text until every string of `expected` is in it."""
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        text = visible_text(browser)
        missing = [s for s in expected if s not in text]
        if not missing:
            return text
        if time.monotonic() > deadline:
            pytest.fail(f"never shown: {missing}\nvisible text: {text[:3000]}")
        time.sleep(0.5)


def settle(browser, seconds: float = 2.0) -> str:
    """Waits until the visible text stops changing (charts finished drawing)."""
    text = visible_text(browser)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        time.sleep(seconds)
        now = visible_text(browser)
        if now == text:
            return now
        text = now
    return text


def check_shown(browser, expected: list[str], shot: str) -> str:
    """Waits for `expected`, asserts no trouble is shown, saves a screenshot."""
    wait_for(browser, expected)
    text = settle(browser)
    trouble = TROUBLE.findall(text)
    assert not trouble, f"{browser.current_url} shows {trouble}:\n{text[:3000]}"
    raw = DOCS / f".{shot}.raw.png"
    browser.save_screenshot(str(raw))
    with Image.open(raw) as image:
        image.convert("RGB").quantize(colors=256).save(
            DOCS / f"tensorboard-{shot}.png", optimize=True
        )
    raw.unlink()
    return text


def check_view(browser, url: str, expected: list[str], shot: str) -> str:
    """Opens `url` in the fresh browser, then `check_shown`."""
    browser.get(url)
    return check_shown(browser, expected, shot)


DEMO_TABS = {
    # fragment: strings the default view shows only once it has the data
    "timeseries": ["accuracy", "cnn/test", "cnn/train", "Smoothed"],
    "scalars": ["tag: | accuracy", "tag: | best/accuracy", "cnn/test"],
    "images": ["tag: | inputs", "tag: | confusion_matrix", "most_confident_mistakes"],
    "graphs": ["Main Graph", "cnn_1", "adam"],
    "distributions": ["tag: | cnn/conv_1/kernel", "gradients/cnn/logits/bias"],
    "histograms": ["tag: | cnn/conv_1/kernel", "gradients/cnn/logits/bias"],
    "text": ["tag: | model_summary", "Total params: 421,642"],
    "pr_curves": ["pr_curve/class_0", "pr_curve/class_9", "cnn/eval is at"],
    "projector": ["Points: | 2000", "Dimension: | 128", "metadata.tsv", "PCA"],
    "profile": ["Sessions (1)", "cnn/train/", "Overview Page", "Performance Summary"],
}


@pytest.mark.parametrize("tab", list(DEMO_TABS))
def test_demo_run_tab(browser, demo_board, tab):
    text = check_view(browser, f"{demo_board.url}/#{tab}", DEMO_TABS[tab], tab)
    if tab == "profile":  # the Overview measured the profiled steps (issue 19)
        assert "No step marker observed" not in text, text[:3000]
        print("PROFILE TEXT", text[:3000])


def test_demo_profile_overview_has_a_step_time(demo_board):
    (run,) = [r for r in json.loads(profile_get(demo_board, "runs")) if "cnn" in r]
    query = urllib.parse.urlencode({"run": run, "tag": "overview_page"})
    (host,) = json.loads(profile_get(demo_board, f"hosts?{query}"))
    query += "&" + urllib.parse.urlencode({"host": host["hostname"]})
    overview = profile_get(demo_board, f"data?{query}")
    (average,) = re.findall(r'"steptime_ms_average": ?"([\d.]+)"', overview)
    assert float(average) > 0, overview[:2000]


def profile_get(server, path: str) -> str:
    """The Profile plugin's data API answers gzip-compressed JSON."""
    url = f"{server.url}/data/plugin/profile/{path}"
    with urllib.request.urlopen(url, timeout=60) as response:
        body = response.read()
        if response.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
    return body.decode()


def test_demo_graph_is_the_train_step(demo_board):
    info = demo_board.get("/data/plugin/graphs/info")["cnn/train"]
    assert info["run_graph"] is True
    assert info["tags"]["keras"]["conceptual_graph"] is True


def test_sweep_hparams_table(browser, sweep_board):
    text = check_view(
        browser,
        f"{sweep_board.url}/#hparams",
        ["TABLE VIEW", "learning_rate", "test accuracy", "Success"],
        "hparams-sweep",
    )
    # 2 learning rates x 2 seeds: a variant's seeds are one session group
    # (issue 19; before, the seed was an hparam and each run a group of its own).
    assert "Number of matching session groups: 2" in text, text[:3000]


@pytest.fixture(scope="session")
def readme_logs(logs) -> pathlib.Path:
    """The README's layout: the three demo runs and a 2x2 sweep in one logdir."""
    root = logs / "readme"
    for model in ("logreg", "mlp", "cnn"):
        run(
            "pipeline-train",
            "--flagfile=flags/demo.cfg",
            f"--model={model}",
            "--steps=60",
            "--eval_every=30",
            "--histogram_every=0",
            "--checkpoint_every=0",
            "--noprojector",
            f"--logdir={root}",
            f"--run_name=demo-{model}",
        )
    run("pipeline-sweep", *SWEEP_FLAGS, f"--logdir={root}", "--sweep_name=s")
    return root


@pytest.fixture(scope="session")
def readme_board(readme_logs):
    yield from serve(readme_logs, "/data/runs")


def test_readme_layout_hparams_shows_the_swept_flag_one_row_per_variant(
    browser, readme_board
):
    deadline = time.monotonic() + TIMEOUT_S
    while len(readme_board.session_groups()) < 5:
        assert time.monotonic() < deadline, readme_board.session_groups()
        time.sleep(0.5)
    experiment = readme_board.get(
        "/data/plugin/hparams/experiment", {"experimentName": ""}
    )
    names = [h["name"] for h in experiment["hparamInfos"]]
    # What the dashboard checks: the first five, differing ones first.
    assert "learning_rate" in names[:5], names
    used = set().union(
        *(variants.applicable_fields(m) for m in ("logreg", "mlp", "cnn"))
    )
    assert set(names) <= used
    groups = {g["name"]: g for g in readme_board.session_groups()}
    assert sorted(groups) == [
        "readme/demo-cnn",
        "readme/demo-logreg",
        "readme/demo-mlp",
        "s/learning_rate=0.001",
        "s/learning_rate=0.01",
    ]
    for rate in ("0.001", "0.01"):
        group = groups[f"s/learning_rate={rate}"]
        assert len(group["sessions"]) == 2
        (mean,) = [
            m["value"]
            for m in group["metricValues"]
            if m["name"] == {"group": "test", "tag": "accuracy"}
        ]
        finals = [
            m["value"]
            for s in group["sessions"]
            for m in s["metricValues"]
            if m["name"] == {"group": "test", "tag": "accuracy"}
        ]
        assert mean == pytest.approx(sum(finals) / 2, abs=1e-6)
    text = check_view(
        browser,
        f"{readme_board.url}/#hparams",
        ["TABLE VIEW", "learning_rate", "test accuracy", "s/learning_rate=0.01"],
        "hparams",
    )
    assert "Number of matching session groups: 5" in text, text[:3000]
    # The visible columns are the checked hyperparameters.
    checked = [label for label, on in browser.execute_script(CHECKBOXES) if on]
    assert "learning_rate" in checked, browser.execute_script(CHECKBOXES)
    assert not set(checked) & {"conv_filters", "hidden_units"} - set(names[:5])


def test_sweep_hparams_parallel_coordinates(browser, sweep_board):
    browser.get(f"{sweep_board.url}/#hparams")
    wait_for(browser, ["PARALLEL COORDINATES VIEW", "learning_rate"])
    assert browser.execute_script(CLICK_TEXT, "PARALLEL COORDINATES VIEW")
    check_shown(
        browser, ["learning_rate", "test accuracy"], "hparams-parallel-coordinates"
    )


def test_sweep_custom_scalars_seed_bands(browser, sweep_board):
    check_view(
        browser,
        f"{sweep_board.url}/#custom_scalars",
        [
            "seed bands",
            "test accuracy: mean +/- std over seeds",
            "seed_bands/learning_rate=0.01",
            "seed_bands/learning_rate=0.001",
        ],
        "custom-scalars-seed-bands",
    )
