"""Search spaces: `--search` specs and `--grid` axes as Optuna distributions."""

import dataclasses

import pytest
from conftest import LOGREG as TINY
from optuna import distributions

from pipeline.sweep import SweepError, driver, space


def test_each_kind_becomes_its_distribution():
    axes = space.parse_search(
        [
            "learning_rate=log:1e-4:1e-1",
            "dropout=float:0:0.5",
            "hidden_layers=int:1:10",
            "hidden_units=int:16:128:16",
            "activation=choice:relu,sigmoid,tanh",
            "dense_units=choice:32,64|128",
        ]
    )
    assert [a.distribution for a in axes] == [
        distributions.FloatDistribution(1e-4, 1e-1, log=True),
        distributions.FloatDistribution(0.0, 0.5),
        distributions.IntDistribution(1, 10),
        distributions.IntDistribution(16, 128, step=16),
        distributions.CategoricalDistribution(["relu", "sigmoid", "tanh"]),
        distributions.CategoricalDistribution(["32,64", "128"]),
    ]
    assert space.describe(axes)["learning_rate"] == "log:1e-4:1e-1"


def test_grid_axes_are_choices_with_the_values_as_typed():
    (axis,) = space.parse_grid(["learning_rate=0.1,0.01"])
    assert axis.choices == ("0.1", "0.01")
    params = {"learning_rate": "0.01"}
    assert space.overrides([axis], params) == (("learning_rate", "0.01"),)
    # The run names grid sweeps always had.
    assert space.run_name(space.overrides([axis], params), 0) == (
        "learning_rate=0.01,seed=0"
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "no_such_flag=log:1e-3:1",
            "--search=no_such_flag=log:1e-3:1: 'no_such_flag' is not a training flag",
        ),
        ("logdir=choice:a,b", "'logdir' is not a training flag"),
        (
            "learning_rate",
            "expected FLAG=KIND:..., KIND one of log, float, int, choice",
        ),
        ("learning_rate=log", "expected FLAG=KIND:..."),
        (
            "learning_rate=log:0.1",
            "--search=learning_rate=log:0.1: expected log:LOW:HIGH",
        ),
        ("learning_rate=log:0.1:0.01", "LOW must be below HIGH"),
        ("learning_rate=log:0:0.1", "log ranges need LOW > 0"),
        ("learning_rate=float:a:1", "'a' is not a number"),
        ("hidden_layers=int:1:2.5", "'2.5' is not an integer"),
        ("hidden_layers=int:1:10:0", "STEP must be >= 1"),
        (
            "learning_rate=exp:1:2",
            "unknown kind 'exp' (one of log, float, int, choice)",
        ),
        (
            "activation=choice:relu,,tanh",
            "--search=activation=choice:relu,,tanh: empty value",
        ),
    ],
)
def test_malformed_specs_are_refused_naming_the_spec(spec, message):
    with pytest.raises(SweepError, match=None) as caught:
        space.parse_search([spec])
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_flag_searched_twice_is_refused():
    with pytest.raises(SweepError, match="learning_rate is already searched"):
        space.parse_search(["learning_rate=log:0.1:1", "learning_rate=float:0:1"])


def test_values_the_flag_refuses_are_caught_before_any_trial():
    request = driver.Request(base=TINY, sweep_name="s", trials=3)
    bad = {
        "activation=choice:relu,swiggle": "--search=activation=choice:relu,swiggle: "
        "flag --activation=swiggle: value should be one of",
        "hidden_layers=int:0:500": "--search=hidden_layers=int:0:500: "
        "flag --hidden_layers=500",
        "learning_rate=float:-1:1": "learning_rate must be > 0",
    }
    for spec, message in bad.items():
        with pytest.raises(SweepError) as caught:
            driver.plan(dataclasses.replace(request, search=(spec,)))
        assert message in str(caught.value), spec


def test_plans_pick_the_sampler_and_the_total():
    grid = driver.plan(
        driver.Request(
            base=TINY, sweep_name="g", grid=("learning_rate=0.1,0.01", "seed=1,2")
        )
    )
    assert (grid.sampler, grid.total, grid.named_by_values) == ("grid", 4, True)
    assert grid.storage_url.endswith("/logs/g/study.db")
    assert grid.storage_url.startswith("sqlite:////")
    tpe = driver.plan(
        driver.Request(
            base=TINY,
            sweep_name="t",
            search=("learning_rate=log:1e-3:1",),
            trials=7,
            metric="test/loss",
        )
    )
    assert (tpe.sampler, tpe.total, tpe.direction) == ("tpe", 7, "minimize")
    with pytest.raises(SweepError, match="--trials: required with --sampler=tpe"):
        driver.plan(dataclasses.replace(tpe_request(), trials=None))
    with pytest.raises(SweepError, match="--trials=5: the grid has 4 points"):
        driver.plan(
            driver.Request(base=TINY, sweep_name="g", grid=("seed=1,2,3,4",), trials=5)
        )
    with pytest.raises(SweepError, match="--sampler=grid: --search=learning_rate"):
        driver.plan(dataclasses.replace(tpe_request(), sampler="grid"))


def tpe_request():
    return driver.Request(
        base=TINY, sweep_name="t", search=("learning_rate=log:1e-3:1",), trials=7
    )


def test_trial_runs_are_named_by_trial_number_or_by_grid_values():
    tpe = driver.plan(dataclasses.replace(tpe_request(), repeats=2))
    runs = tpe.trial_runs(7, {"learning_rate": 0.05})
    assert [r.name for r in runs] == ["trial=0007,seed=0", "trial=0007,seed=1"]
    assert [r.config.learning_rate for r in runs] == [0.05, 0.05]
    assert [r.config.seed for r in runs] == [0, 1]
    assert runs[0].config.logdir.endswith("t")


def test_compare_shows_parameter_importances_once_enough_trials_completed(tmp_path):
    import optuna

    from pipeline.sweep import summary as study_summary

    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="imp", storage=url, direction="maximize")
    space = {
        "learning_rate": distributions.FloatDistribution(1e-3, 1.0, log=True),
        "activation": distributions.CategoricalDistribution(["relu", "tanh"]),
    }
    for i in range(study_summary.IMPORTANCE_MIN_TRIALS - 1):
        lr = 10 ** (-3 + i * 0.7)
        params = {"learning_rate": lr, "activation": ["relu", "tanh"][i % 2]}
        study.add_trial(
            optuna.create_trial(params=params, distributions=space, value=lr)
        )
    text = study_summary.describe(url, "imp")
    assert "parameter importances: after 5 completed trials (4 so far)" in text
    study.add_trial(
        optuna.create_trial(
            params={"learning_rate": 0.9, "activation": "relu"},
            distributions=space,
            value=0.9,
        )
    )
    lines = study_summary.describe(url, "imp").splitlines()
    assert (
        lines[1]
        == "best trial 4: value=0.9000 (learning_rate=0.9, activation=relu)  "[:-2]
    )
    importance = lines[2]
    assert importance.startswith(
        "parameter importances (PED-ANOVA, 5 completed trials): learning_rate "
    )
    assert importance.index("learning_rate") < importance.index("activation")
