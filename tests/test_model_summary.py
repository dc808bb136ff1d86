import tensorflow as tf
from conftest import read_events

from pipeline.runs import rundir


def test_model_summary_in_run_directory_and_text_tab(mlp_run):
    run = mlp_run
    saved = (run / rundir.MODEL_SUMMARY_NAME).read_text()
    # mlp 784 -> 32 -> 10: 784*32 + 32 + 32*10 + 10 parameters.
    assert 'Model: "mlp"' in saved
    assert "hidden_1 (Dense)" in saved
    assert "(None, 32)" in saved
    assert "Total params: 25,450" in saved

    acc = read_events(run / "train")
    assert acc.SummaryMetadata("model_summary").plugin_data.plugin_name == "text"
    (event,) = acc.Tensors("model_summary")
    assert event.step == 0
    text = tf.make_ndarray(event.tensor_proto).item().decode()
    assert text.startswith("```\n")
    assert text.endswith("```")
    assert text.removeprefix("```").removesuffix("```").strip("\n") == saved.strip("\n")
