"""The Projector tab after `pipeline-eval`: embeddings, sprite and labels, served."""

import dataclasses
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from conftest import LOGREG, MLP_RUN, copy_run, main_in_process, train_run
from PIL import Image

from pipeline import data
from pipeline.runs import restore
from pipeline.tensorboard import board, projector
from pipeline.tools import evaluate


@pytest.fixture(scope="module")
def evaluated_run(mlp_run, tmp_path_factory):
    """An mlp run (32 hidden units) after `pipeline-eval` on its test split."""
    run = copy_run(mlp_run, tmp_path_factory.mktemp("projector"))
    result = main_in_process("pipeline-eval", f"--run={run}")
    assert result.returncode == 0, result.stderr
    assert (
        "Projector: penultimate-layer embeddings of 2,000 of 2,000 examples "
        "(at most 2,000)"
    ) in result.stdout
    return run


def read_metadata(directory):
    lines = (directory / projector.METADATA_NAME).read_text().splitlines()
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def test_eval_writes_every_test_digit_with_labels_and_predictions(evaluated_run):
    eval_dir = evaluated_run / "eval"
    reader = tf.train.load_checkpoint(str(eval_dir))
    embedding = reader.get_tensor(projector.TENSOR_NAME)
    assert embedding.shape == (2000, 32)  # the hidden layer feeding the logits

    header, rows = read_metadata(eval_dir)
    assert header == ["index", "label", "predicted", "correct"]
    _, test = data.load_mnist_sample()
    assert [int(row[1]) for row in rows] == test.labels.tolist()
    restored = restore.open_run(evaluated_run)
    outputs = evaluate.predict_outputs(restored.load_model(), test)
    assert [int(row[2]) for row in rows] == outputs.predicted.tolist()
    assert [row[3] for row in rows] == [
        "yes" if ok else "no" for ok in outputs.predicted == test.labels
    ]
    assert {"yes", "no"} == {row[3] for row in rows}  # mistakes are findable

    with Image.open(eval_dir / projector.SPRITE_NAME) as sprite:
        assert sprite.size == (45 * 28, 45 * 28)  # ceil(sqrt(2000)) digits a side
        first = np.asarray(sprite)[:28, :28]
    np.testing.assert_array_equal(first, 255 - test.images[0])


def test_the_projector_plugin_serves_the_embedding(evaluated_run):
    with board.TensorBoardServer(evaluated_run.parent) as server:
        run = f"{evaluated_run.name}/eval"
        deadline = time.monotonic() + 60
        while run not in server.get("/data/plugin/projector/runs"):
            assert time.monotonic() < deadline, "projector never listed the run"
            time.sleep(0.5)
        info = server.get(f"/data/plugin/projector/info?run={run}")
        (embedding,) = info["embeddings"]
        assert embedding["tensorName"] == projector.TENSOR_NAME
        assert embedding["tensorShape"] == [2000, 32]
        query = urllib.parse.urlencode({"run": run, "name": projector.TENSOR_NAME})
        with urllib.request.urlopen(
            f"{server.url}/data/plugin/projector/metadata?{query}"
        ) as response:
            assert response.read().decode().splitlines()[0] == (
                "index\tlabel\tpredicted\tcorrect"
            )
        with urllib.request.urlopen(
            f"{server.url}/data/plugin/projector/sprite_image?{query}"
        ) as response:
            assert response.headers["Content-Type"] == "image/png"


def test_a_bigger_split_is_capped(mlp_run, tmp_path):
    restored = restore.open_run(mlp_run)
    _, test = data.load_mnist_sample()
    count = projector.write_projector(
        tmp_path,
        restored.load_model(),
        test,
        data.class_names(None),
        step=30,
        max_examples=100,
    )
    assert count == 100
    _, rows = read_metadata(tmp_path)
    assert len(rows) == 100
    embedding = tf.train.load_checkpoint(str(tmp_path)).get_tensor(
        projector.TENSOR_NAME
    )
    assert embedding.shape == (100, 32)
    with Image.open(tmp_path / projector.SPRITE_NAME) as sprite:
        assert sprite.size == (280, 280)


def test_rewriting_keeps_one_embedding_named_by_step(mlp_run, tmp_path):
    restored = restore.open_run(mlp_run)
    _, test = data.load_mnist_sample()
    model = restored.load_model()
    names = data.class_names(None)
    projector.write_projector(tmp_path, model, test, names, step=20, max_examples=50)
    projector.write_projector(tmp_path, model, test, names, step=30, max_examples=50)
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("embedding-30")
    assert sorted(p.name for p in tmp_path.glob("embedding-*")) == [
        "embedding-30.data-00000-of-00001",
        "embedding-30.index",
    ]


def test_training_ends_with_the_test_split_in_the_projector(tmp_path):
    config = dataclasses.replace(MLP_RUN, projector=True, steps=10)
    run = train_run(tmp_path, config, "projected")
    test_dir = run.path / "test"
    assert tf.train.latest_checkpoint(str(test_dir)).endswith("embedding-10")
    embedding = tf.train.load_checkpoint(str(test_dir)).get_tensor(
        projector.TENSOR_NAME
    )
    assert embedding.shape == (2000, 32)
    header, rows = read_metadata(test_dir)
    assert header == ["index", "label", "predicted", "correct"]
    assert len(rows) == 2000
    assert (test_dir / "projector_config.pbtxt").is_file()


def test_noprojector_writes_none(mlp_run):
    """The session's MLP run was trained with --noprojector (MLP_RUN)."""
    assert MLP_RUN.projector is False
    assert not (mlp_run / "test" / "projector_config.pbtxt").exists()
    assert tf.train.latest_checkpoint(str(mlp_run / "test")) is None


def test_no_projector_for_a_model_without_a_learned_embedding(tmp_path):
    """Logistic regression's penultimate layer is its input (issue 19)."""
    config = dataclasses.replace(LOGREG, projector=True, steps=10)
    run = train_run(tmp_path, config, "logreg").path
    assert (run / "test").is_dir()
    assert not list((run / "test").glob("embedding*"))
    assert not (run / "test" / "projector_config.pbtxt").exists()
