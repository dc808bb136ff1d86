import pytest
from absl import flags

from pipeline.cli import evaluate as evaluate_main
from pipeline.cli import export as export_main
from pipeline.cli import predict as predict_main
from pipeline.cli import run_flags


@pytest.mark.parametrize(
    "define",
    [
        evaluate_main.define_eval_flags,
        predict_main.define_predict_flags,
        export_main.define_export_flags,
    ],
)
def test_run_is_required_and_checkpoint_is_latest_or_a_step(define):
    fv = flags.FlagValues()
    define(fv)
    extra = ["--out=x"] if "out" in fv else []
    extra += ["--index=0"] if "index" in fv else []
    with pytest.raises(flags.IllegalFlagValueError, match="--run must have a value"):
        fv(["prog", *extra])
    fv = flags.FlagValues()
    define(fv)
    with pytest.raises(flags.IllegalFlagValueError, match="'latest' or a step number"):
        fv(["prog", "--run=r", "--checkpoint=last", *extra])
    fv = flags.FlagValues()
    define(fv)
    fv(["prog", "--run=r", "--checkpoint=20", *extra])
    assert run_flags.checkpoint_value(fv.checkpoint) == 20


def test_predict_needs_an_image_or_an_index():
    fv = flags.FlagValues()
    predict_main.define_predict_flags(fv)
    with pytest.raises(flags.IllegalFlagValueError, match="at least one --image"):
        fv(["prog", "--run=r"])
    fv = flags.FlagValues()
    predict_main.define_predict_flags(fv)
    fv(["prog", "--run=r", "--image=a.png", "--image=b.png"])
    assert fv.image == ["a.png", "b.png"]


def test_eval_data_flags_default_to_the_run():
    fv = flags.FlagValues()
    evaluate_main.define_eval_flags(fv)
    fv(["prog", "--run=r"])
    assert (fv.dataset, fv.data_dir, fv.split, fv.format) == (
        None,
        None,
        "test",
        "text",
    )
    assert fv.write_summaries
