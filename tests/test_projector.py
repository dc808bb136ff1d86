"""The Projector tab after `pipeline-eval`: embeddings, sprite and labels, served."""

import dataclasses
import pathlib
import shutil
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from conftest import LOGREG, MLP_RUN, copy_run, main_in_process, train_run
from PIL import Image
from tensorboard.plugins import projector as tb_projector

from pipeline import data
from pipeline.runs import restore
from pipeline.tensorboard import board, projector
from pipeline.tools import evaluate

# How the Projector names a variable saved as `Checkpoint(embedding=...)`.
CHECKPOINT_TENSOR = "embedding/.ATTRIBUTES/VARIABLE_VALUE"


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
    assert sorted(p.name for p in eval_dir.glob("embedding*")) == [
        "embedding.bytes",
        "embedding_metadata.tsv",
        "embedding_sprite.png",
    ]
    # The hidden layer feeding the logits, as the model computes it.
    embedding = projector.read_embedding(eval_dir)
    restored = restore.open_run(evaluated_run)
    _, test = data.load_mnist_sample()
    features, _ = projector.embed(restored.load_model(), test)
    np.testing.assert_array_equal(embedding, features)

    header, rows = read_metadata(eval_dir)
    assert header == ["index", "label", "predicted", "correct"]
    assert [int(row[1]) for row in rows] == test.labels.tolist()
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


def served_tensor(server, run, name):
    """The Projector's tensor as the browser fetches it (float32 bytes)."""
    deadline = time.monotonic() + 60
    while run not in server.get("/data/plugin/projector/runs"):
        assert time.monotonic() < deadline, "projector never listed the run"
        time.sleep(0.5)
    query = urllib.parse.urlencode({"run": run, "name": name})
    with urllib.request.urlopen(
        f"{server.url}/data/plugin/projector/tensor?{query}"
    ) as response:
        return np.frombuffer(response.read(), np.float32)


def test_the_projector_plugin_serves_the_embedding(evaluated_run):
    """Served by a TensorBoard without TensorFlow (the tensor file needs none)."""
    with board.TensorBoardServer(evaluated_run.parent) as server:
        assert server.tensorflow is False
        run = f"{evaluated_run.name}/eval"
        served = served_tensor(server, run, projector.TENSOR_NAME)
        embedding = projector.read_embedding(evaluated_run / "eval")
        np.testing.assert_array_equal(served, embedding.ravel())
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
        max_examples=100,
    )
    assert count == 100
    _, rows = read_metadata(tmp_path)
    assert len(rows) == 100
    assert projector.read_embedding(tmp_path).shape == (100, 32)
    with Image.open(tmp_path / projector.SPRITE_NAME) as sprite:
        assert sprite.size == (280, 280)


def write_checkpoint_embedding(directory, features):
    """A Projector embedding as runs before the tensor files kept it: a
    `tf.train.Checkpoint` found through the directory's `checkpoint` file,
    and a config with no `tensor_path`."""
    checkpoint = tf.train.Checkpoint(embedding=tf.Variable(features))
    tf.train.CheckpointManager(
        checkpoint, str(directory), max_to_keep=1, checkpoint_name="embedding"
    ).save(checkpoint_number=20)
    config = tb_projector.ProjectorConfig()
    config.embeddings.add().tensor_name = CHECKPOINT_TENSOR
    tb_projector.visualize_embeddings(str(directory), config)


def test_rewriting_leaves_one_embedding_and_nothing_of_the_old_format(
    mlp_run, tmp_path
):
    restored = restore.open_run(mlp_run)
    _, test = data.load_mnist_sample()
    model = restored.load_model()
    names = data.class_names(None)
    write_checkpoint_embedding(tmp_path, np.ones((50, 32), np.float32))
    projector.write_projector(tmp_path, model, test, names, max_examples=50)
    projector.write_projector(tmp_path, model, test, names, max_examples=50)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "embedding.bytes",
        "embedding_metadata.tsv",
        "embedding_sprite.png",
        "projector_config.pbtxt",
    ]
    assert "tensor_path" in (tmp_path / "projector_config.pbtxt").read_text()


def test_an_embedding_that_reads_as_text_is_written_as_tsv():
    """All zeros (dead ReLUs) or 0.5s (bytes 00 00 00 3F) are valid UTF-8:
    TensorBoard would parse the binary file as TSV and fail, so such a
    tensor goes as TSV; 0.1 (CD CC CC 3D) is not text."""
    assert projector.tensor_file(np.full((3, 2), 0.1, np.float32))[0] == (
        "embedding.bytes"
    )
    name, payload = projector.tensor_file(np.zeros((3, 2), np.float32))
    assert name == "embedding.tsv"
    assert payload == b"0\t0\n0\t0\n0\t0\n"
    halves = np.full((2, 3), 0.5, np.float32)
    name, payload = projector.tensor_file(halves)
    assert (name, payload) == ("embedding.tsv", b"0.5\t0.5\t0.5\n0.5\t0.5\t0.5\n")


def test_any_embedding_kept_in_a_checkpoint_asks_for_tensorflow(tmp_path):
    """One config may list several embeddings: one without a `tensor_path`
    (kept in a checkpoint) is enough; a damaged config asks for nothing."""
    config = tb_projector.ProjectorConfig()
    config.embeddings.add(tensor_name="new", tensor_path="embedding.bytes")
    tb_projector.visualize_embeddings(str(tmp_path), config)
    assert not board.needs_tensorflow(tmp_path)
    config.embeddings.add(tensor_name=CHECKPOINT_TENSOR)
    tb_projector.visualize_embeddings(str(tmp_path), config)
    assert board.needs_tensorflow(tmp_path)
    (tmp_path / "projector_config.pbtxt").write_text("embeddings { tensor_name: ")
    assert not board.needs_tensorflow(tmp_path)


def test_older_runs_embedding_checkpoint_is_served_with_tensorflow(
    evaluated_run, tmp_path
):
    """A log directory that also holds a run written before the tensor files
    gets a TensorBoard with TensorFlow, which serves both."""
    logdir = tmp_path / "logs"
    new = copy_run(evaluated_run, logdir)
    old = pathlib.Path(shutil.copytree(evaluated_run, logdir / "older"))
    assert not board.needs_tensorflow(logdir)
    for path in (old / "eval").glob("embedding.bytes"):
        path.unlink()
    features = np.arange(40 * 3, dtype=np.float32).reshape(40, 3)
    write_checkpoint_embedding(old / "eval", features)
    assert board.needs_tensorflow(logdir)
    with board.TensorBoardServer(logdir) as server:
        assert server.tensorflow is True
        served = served_tensor(server, "older/eval", CHECKPOINT_TENSOR)
        np.testing.assert_array_equal(served, features.ravel())
        embedding = projector.read_embedding(new / "eval")
        served = served_tensor(server, f"{new.name}/eval", projector.TENSOR_NAME)
        np.testing.assert_array_equal(served, embedding.ravel())


def test_training_ends_with_the_test_split_in_the_projector(tmp_path):
    config = dataclasses.replace(MLP_RUN, projector=True, steps=10)
    run = train_run(tmp_path, config, "projected")
    test_dir = run.path / "test"
    assert projector.read_embedding(test_dir).shape == (2000, 32)
    header, rows = read_metadata(test_dir)
    assert header == ["index", "label", "predicted", "correct"]
    assert len(rows) == 2000
    assert (test_dir / "projector_config.pbtxt").is_file()


def test_noprojector_writes_none(mlp_run):
    """The session's MLP run was trained with --noprojector (MLP_RUN)."""
    assert MLP_RUN.projector is False
    assert not (mlp_run / "test" / "projector_config.pbtxt").exists()
    assert not list((mlp_run / "test").glob("embedding*"))


def test_no_projector_for_a_model_without_a_learned_embedding(tmp_path):
    """Logistic regression's penultimate layer is its input (issue 19)."""
    config = dataclasses.replace(LOGREG, projector=True, steps=10)
    run = train_run(tmp_path, config, "logreg").path
    assert (run / "test").is_dir()
    assert not list((run / "test").glob("embedding*"))
    assert not (run / "test" / "projector_config.pbtxt").exists()
