import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    MLP_RUN,
    error_lines,
    main_in_process,
    run_cli,
    snapshot,
    train_run,
)

from pipeline import data
from pipeline.runs import restore
from pipeline.tools import export, predict

# Runs in a fresh interpreter: nothing of the pipeline is imported there.
RELOAD_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf

    model = tf.saved_model.load(sys.argv[1])
    images = np.load(sys.argv[2])
    flat = model.signatures["serving_default"](images=tf.constant(images))
    channels = model.signatures["serving_channels"](
        images=tf.constant(images[..., None])
    )
    np.savez(
        sys.argv[3],
        probabilities=flat["probabilities"].numpy(),
        classes=flat["classes"].numpy(),
        channels=channels["probabilities"].numpy(),
    )
    """
)


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory):
    """MLP_RUN's schedule with a small CNN: conv layers through TFLite too."""
    config = dataclasses.replace(MLP_RUN, model="cnn", learning_rate=0.01)
    return train_run(tmp_path_factory.mktemp("logs_cnn"), config, "cnn").path


@pytest.fixture(scope="module")
def test_images():
    _, test = data.load_mnist_sample()
    return test.images[:16]


def reload_in_fresh_process(model_dir, images, tmp_path):
    np.save(tmp_path / "images.npy", images)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            RELOAD_SCRIPT,
            str(model_dir),
            str(tmp_path / "images.npy"),
            str(tmp_path / "served.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return np.load(tmp_path / "served.npz")


def test_cli_export_serves_what_pipeline_predict_prints(mlp_run, test_images, tmp_path):
    before = snapshot(mlp_run)
    out = tmp_path / "model"
    result = run_cli("pipeline-export", f"--run={mlp_run}", f"--out={out}")
    assert result.returncode == 0, result.stderr
    assert f"step 30 -> {out}" in result.stdout
    assert (out / "saved_model.pb").is_file()
    metadata = json.loads((out / export.METADATA_NAME).read_text())
    assert (metadata["step"], metadata["model"]) == (30, "mlp")
    assert snapshot(mlp_run) == before

    served = reload_in_fresh_process(out, test_images, tmp_path)
    np.save(tmp_path / "digits.npy", test_images)
    # pipeline-predict's main here (test_predict.py runs the real program).
    predicted = main_in_process(
        "pipeline-predict",
        f"--run={mlp_run}",
        f"--image={tmp_path / 'digits.npy'}",
        "--format=json",
    )
    assert predicted.returncode == 0, predicted.stderr
    rows = json.loads(predicted.stdout)["predictions"]
    expected = np.array([list(row["probabilities"].values()) for row in rows])
    assert served["probabilities"].shape == (16, 10)
    np.testing.assert_allclose(served["probabilities"], expected, atol=1e-6)
    np.testing.assert_array_equal(served["channels"], served["probabilities"])
    assert served["classes"].tolist() == [int(row["top_class"]) for row in rows]


def test_binary_export_returns_one_probability(binary_run, test_images, tmp_path):
    restored = restore.open_run(binary_run)
    out = export.export_run(restored, tmp_path / "binary_model")
    loaded = tf.saved_model.load(str(out))
    served = loaded.signatures["serving_default"](images=tf.constant(test_images))
    expected = predict.predict_probabilities(restored.load_model(), test_images)
    assert served["probabilities"].shape == (16,)
    np.testing.assert_allclose(served["probabilities"].numpy(), expected, atol=1e-6)
    assert served["classes"].numpy().tolist() == (expected > 0.5).astype(int).tolist()


def test_export_creates_missing_parents(mlp_run, tmp_path):
    out = export.export_run(restore.open_run(mlp_run), tmp_path / "a" / "b" / "model")
    assert (out / "saved_model.pb").is_file()
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["model"]


def test_export_into_empty_directory(mlp_run, tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    export.export_run(restore.open_run(mlp_run, 10), out)
    assert (out / "saved_model.pb").is_file()
    assert json.loads((out / export.METADATA_NAME).read_text())["step"] == 10
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]  # no staging left


def test_cli_refuses_non_empty_out_and_keeps_it(mlp_run, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = main_in_process("pipeline-export", f"--run={mlp_run}", f"--out={out}")
    assert result.returncode == 1
    (line,) = error_lines(result.stderr, "pipeline-export")
    assert line == (
        f"pipeline-export: error: --out={out}: already exists and is not empty "
        "(not overwritten)"
    )
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.parametrize("content", [b"", b"data"])
def test_a_file_at_out_is_named_as_a_file_and_kept(tmp_path, content):
    out = tmp_path / "model"
    out.write_bytes(content)
    with pytest.raises(export.ExportError) as raised:
        export.check_destination(out)
    assert str(raised.value) == (
        f"--out={out}: is a file, not a directory; the export is a SavedModel "
        "directory: give a new path or an empty directory (not overwritten)"
    )
    assert out.read_bytes() == content


def test_cli_unknown_step_writes_nothing(mlp_run, tmp_path):
    out = tmp_path / "model"
    result = main_in_process(
        "pipeline-export", f"--run={mlp_run}", "--checkpoint=7", f"--out={out}"
    )
    assert result.returncode == 1
    (line,) = error_lines(result.stderr, "pipeline-export")
    assert "--checkpoint=7: no checkpoint at that step" in line
    assert "(saved steps: 10, 20, 30)" in line
    assert not out.exists()


def tflite_probabilities(tflite_bytes, images):
    """Runs a TensorFlow Lite model's serving_default signature on `images`."""
    interpreter = tf.lite.Interpreter(model_content=tflite_bytes)
    serve = interpreter.get_signature_runner("serving_default")
    return serve(images=images)["probabilities"]


@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_tflite_converts_the_saved_model_and_matches_it(
    request, test_images, tmp_path, model
):
    restored = restore.open_run(request.getfixturevalue(f"{model}_run"))
    out = export.export_run(restored, tmp_path / "model")
    converter = tf.lite.TFLiteConverter.from_saved_model(str(out))
    tflite_bytes = converter.convert()
    saved = tf.saved_model.load(str(out)).signatures["serving_default"]
    expected = saved(images=tf.constant(test_images))["probabilities"].numpy()
    got = tflite_probabilities(tflite_bytes, test_images)
    assert got.shape == (16, 10)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # ...and both are the checkpoint's model (a converter that lost the
    # weights gives other numbers).
    keras_probabilities = predict.predict_probabilities(
        restored.load_model(precision=export.SERVING_PRECISION), test_images
    )
    np.testing.assert_allclose(got, keras_probabilities, atol=1e-5)


def test_cli_format_tflite_writes_model_tflite_beside_the_saved_model(
    mlp_run, test_images, tmp_path
):
    out = tmp_path / "model"
    result = main_in_process(
        "pipeline-export", f"--run={mlp_run}", f"--out={out}", "--format=tflite"
    )
    assert result.returncode == 0, result.stderr
    assert f"TensorFlow Lite: {out / 'model.tflite'} (serving_default)" in result.stdout
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == [
        "fingerprint.pb",
        "model.tflite",
        export.METADATA_NAME,
        "saved_model.pb",
    ]
    assert json.loads((out / export.METADATA_NAME).read_text())["tflite"] == (
        "model.tflite"
    )
    # The SavedModel beside it, loaded here (a fresh process loads one in
    # test_cli_export_serves_what_pipeline_predict_prints).
    saved = tf.saved_model.load(str(out)).signatures["serving_default"]
    expected = saved(images=tf.constant(test_images))["probabilities"].numpy()
    got = tflite_probabilities((out / "model.tflite").read_bytes(), test_images)
    np.testing.assert_allclose(got, expected, atol=1e-5)
