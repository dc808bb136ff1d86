import json
import pathlib

import numpy as np
import pytest
from conftest import error_lines, main_in_process, run_cli, snapshot
from PIL import Image

from pipeline import data
from pipeline.runs import restore
from pipeline.tools import evaluate, predict


@pytest.fixture(scope="module")
def test_digits():
    _, test = data.load_mnist_sample()
    return test


@pytest.fixture
def digit_png(tmp_path, test_digits):
    """Test digit 0 (a 4) saved as a 28x28 grayscale PNG."""
    path = tmp_path / "digit.png"
    Image.fromarray(test_digits.images[0]).save(path)
    return path


def paper_photo(digit: np.ndarray) -> Image.Image:
    """The digit dark on cream paper, 6x larger, off-centre, RGB: a scan."""
    big = Image.fromarray(255 - digit).resize((168, 168), Image.Resampling.BICUBIC)
    page = Image.new("RGB", (300, 220), (250, 245, 235))
    page.paste(big.convert("RGB"), (90, 30))
    return page


def test_28x28_png_round_trips_exactly(digit_png, test_digits):
    assert np.array_equal(predict.load_image(digit_png), test_digits.images[0])


def test_dark_on_white_is_inverted_to_mnist_polarity():
    image = np.full((28, 28), 255, np.uint8)
    image[5:20, 12:15] = 0  # a black stroke on white
    out = predict.image_to_mnist(Image.fromarray(image))
    assert out[0, 0] == 0
    assert out[10, 13] == 255


@pytest.mark.parametrize("index", [0, 1, 2, 3])
def test_scanned_digit_is_normalised_like_mnist(tmp_path, test_digits, index):
    digit = test_digits.images[index]
    path = tmp_path / "scan.jpg"
    paper_photo(digit).save(path, quality=90)
    out = predict.load_image(path)
    assert out.shape == (28, 28)
    assert out.dtype == np.uint8
    rows = np.flatnonzero(out.max(axis=1) > 25)
    cols = np.flatnonzero(out.max(axis=0) > 25)
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in (19, 20, 21)
    assert np.corrcoef(out.ravel(), digit.ravel())[0, 1] > 0.8


def test_transparent_background_counts_as_white():
    rgba = np.zeros((40, 40, 4), np.uint8)  # fully transparent
    rgba[10:30, 18:22] = (0, 0, 0, 255)  # an opaque black bar
    out = predict.image_to_mnist(Image.fromarray(rgba, "RGBA"))
    assert out[0, 0] == 0
    assert out.max() == 255


def test_blank_image_is_refused():
    with pytest.raises(data.DataError, match="blank.png: no digit found"):
        predict.image_to_mnist(Image.new("L", (50, 50), 255), "blank.png")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not an image", "not an image Pillow can read"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not an image Pillow can read"),
    ],
    ids=["text", "truncated-png"],
)
def test_unreadable_image_names_the_file(tmp_path, content, message):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(data.DataError, match=f"{path}: {message}"):
        predict.load_image(path)


@pytest.mark.parametrize(
    ("array", "count"),
    [
        (np.zeros((28, 28), np.uint8), 1),
        (np.zeros((28, 28, 1), np.uint8), 1),
        (np.zeros((3, 28, 28), np.uint8), 3),
        (np.zeros((3, 28, 28, 1), np.int64), 3),
        (np.full((2, 28, 28), 0.5, np.float32), 2),
    ],
)
def test_npy_shapes_accepted(tmp_path, array, count):
    path = tmp_path / "a.npy"
    np.save(path, array)
    images = predict.load_array(path)
    assert len(images) == count
    assert all(image.shape == (28, 28) and image.dtype == np.uint8 for image in images)


def test_npy_float_pixels_scale_to_bytes():
    out = predict.array_to_mnist(np.full((28, 28), 0.5), "x.npy")
    assert out.max() == 128


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((32, 32), np.uint8), r"array has shape \[32, 32\], expected"),
        (np.zeros((2, 28, 27), np.uint8), r"array has shape \[2, 28, 27\]"),
        (np.full((28, 28), 2.0), r"float pixels must be in \[0, 1\]"),
        (np.full((28, 28), 300), r"integer pixels must be in 0..255"),
        (np.array([{"a": 1}], dtype=object), "not a readable .npy array"),
    ],
    ids=["32x32", "28x27", "float>1", "int>255", "pickled"],
)
def test_bad_npy_names_the_file(tmp_path, array, message):
    path = tmp_path / "bad.npy"
    np.save(path, array, allow_pickle=True)
    with pytest.raises(data.DataError, match=f"{path}: {message}"):
        predict.load_array(path)


def test_folder_expands_to_its_images_in_order(tmp_path, test_digits):
    Image.fromarray(test_digits.images[1]).save(tmp_path / "b.png")
    Image.fromarray(test_digits.images[0]).save(tmp_path / "a.png")
    np.save(tmp_path / "c.npy", test_digits.images[2:4])
    (tmp_path / "notes.txt").write_text("ignored")
    examples = predict.load_inputs([tmp_path])
    assert [pathlib.Path(e.source).name for e in examples] == [
        "a.png",
        "b.png",
        "c.npy[0]",
        "c.npy[1]",
    ]
    assert np.array_equal(examples[3].image, test_digits.images[3])


def test_empty_folder_and_missing_file(tmp_path):
    with pytest.raises(data.DataError, match="folder holds no .png"):
        predict.load_inputs([tmp_path])
    with pytest.raises(data.DataError, match="nope.png: file not found"):
        predict.load_inputs([tmp_path / "nope.png"])


def test_index_out_of_range(test_digits):
    with pytest.raises(
        data.DataError, match=r"--index=2000: mnist_sample/test has 2000"
    ):
        predict.dataset_examples(test_digits, [2000], "mnist_sample", "test")


def test_probabilities_match_eval_outputs(mlp_run, test_digits):
    restored = restore.open_run(mlp_run)
    model = restored.load_model()
    probs = predict.predict_probabilities(model, test_digits.images[:50])
    assert probs.shape == (50, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    outputs = evaluate.predict_outputs(model, test_digits)
    np.testing.assert_allclose(probs, outputs.probabilities[:50], atol=1e-6)
    assert np.array_equal(probs.argmax(axis=1), outputs.predicted[:50])


def test_binary_run_rows_name_the_class(binary_run, test_digits):
    restored = restore.open_run(binary_run)
    probs = predict.predict_probabilities(restored.load_model(), test_digits.images[:2])
    assert probs.shape == (2,)
    examples = predict.dataset_examples(
        data.binarize(test_digits, 3), [0, 1], "mnist_sample", "test"
    )
    rows = predict.prediction_rows(examples, probs, binary_class=3)
    assert list(rows[0]["probabilities"]) == ["not 3", "3"]
    assert rows[0]["label"] == "not 3"  # test digit 0 is a 4
    assert rows[0]["probabilities"]["3"] == pytest.approx(float(probs[0]))
    assert "p(3)" in predict.format_rows(rows, binary_class=3)


def test_cli_png_and_index_agree(mlp_run, digit_png, tmp_path):
    scan = tmp_path / "scan.jpg"
    paper_photo(np.asarray(Image.open(digit_png))).save(scan)
    before = snapshot(mlp_run)
    result = run_cli(
        "pipeline-predict",
        f"--run={mlp_run}",
        f"--image={digit_png}",
        f"--image={scan}",
        "--index=0",
        "--format=json",
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["step"] == 30
    png, jpg, row = out["predictions"]
    assert png["source"] == str(digit_png)
    assert row["source"] == "mnist_sample/test[0]"
    assert row["label"] == "4"
    assert png["probabilities"] == row["probabilities"]
    assert sum(jpg["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    top = max(png["probabilities"], key=png["probabilities"].get)
    assert png["top_class"] == top
    assert snapshot(mlp_run) == before


def test_cli_text_prints_one_row_per_image(mlp_run, tmp_path, test_digits):
    for i in range(3):
        Image.fromarray(test_digits.images[i]).save(tmp_path / f"d{i}.png")
    result = main_in_process(
        "pipeline-predict", f"--run={mlp_run}", f"--image={tmp_path}"
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"{mlp_run} at step 30"
    assert lines[1].split()[:4] == ["source", "label", "top", "p(top)"]
    assert [line.split()[0] for line in lines[2:]] == [
        str(tmp_path / f"d{i}.png") for i in range(3)
    ]


@pytest.mark.parametrize(
    ("make_file", "message"),
    [
        (lambda p: p.write_text("hello"), "not an image Pillow can read"),
        (
            lambda p: np.save(p.with_suffix(".npy"), np.zeros((32, 32), np.uint8)),
            "array has shape [32, 32]",
        ),
    ],
    ids=["text-as-png", "32x32-npy"],
)
def test_cli_bad_file_is_one_line(mlp_run, tmp_path, make_file, message):
    path = tmp_path / "input.png"
    make_file(path)
    target = path if path.exists() else path.with_suffix(".npy")
    result = main_in_process(
        "pipeline-predict", f"--run={mlp_run}", f"--image={target}"
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    (line,) = error_lines(result.stderr, "pipeline-predict")
    assert line.startswith(f"pipeline-predict: error: {target}: {message}")


def test_cli_needs_an_input(mlp_run):
    result = run_cli("pipeline-predict", f"--run={mlp_run}")
    assert result.returncode == 1
    assert "give at least one --image or --index" in result.stderr
