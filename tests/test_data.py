"""Data loaders: scikit-learn's digits and their fixed split, image folders, pre-extracted latents (never
unpickled), the dispatcher, and the messages a user gets for data that cannot be used."""

from __future__ import annotations

import hashlib
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from dimbench.data import DataError, Dataset, load_data, load_digits, load_image_folder, load_latents, resize
from dimbench.errors import UserError


def rows_sorted(x: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Images with their labels as rows, in a canonical order: compares datasets as multisets."""
    a = np.concatenate([x.flatten(1).numpy(), labels[:, None].numpy().astype(np.float32)], axis=1)
    return a[np.lexsort(a.T[::-1])]


def one_line_error(excinfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert isinstance(excinfo.value, UserError)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# ------------------------------------------------------------------------------------------------- digits
@pytest.mark.parametrize("resolution", [8, 16, 32])
def test_digits_shapes_and_range(resolution):
    data = load_digits(resolution)
    assert len(data) == 1437
    assert data.x.shape == (1437, 1, resolution, resolution) and data.x.dtype == torch.float32
    assert data.labels.shape == (1437,) and data.labels.dtype == torch.long
    assert set(data.labels.tolist()) == set(range(10)) and data.num_classes == 10
    assert (data.channels, data.resolution, data.moments, data.scale) == (1, resolution, False, 1.0)
    assert data.x.min() >= -1.0 and data.x.max() <= 1.0
    assert data.x.min() < -0.99 and data.x.max() > 0.9  # the range is used, not squeezed
    assert data.source == (f"scikit-learn load_digits (train split, 1437 images), {resolution}x{resolution} px, "
                           f"1 channel, [-1, 1]")


def test_digits_at_their_own_size_are_the_originals_mapped_to_minus_one_one():
    from sklearn.datasets import load_digits as sk_load_digits

    data = load_digits(8, "all")
    bunch = sk_load_digits()
    np.testing.assert_array_equal(data.x[:, 0].numpy(), bunch.images.astype(np.float32) / 8 - 1)
    np.testing.assert_array_equal(data.labels.numpy(), bunch.target)


def test_digits_train_and_test_split_the_whole_set_stratified():
    train, test, whole = (load_digits(8, s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(whole)) == (1437, 360, 1797)
    # Together they are the whole set, each image once: the split is disjoint.
    both = torch.cat([train.x, test.x]), torch.cat([train.labels, test.labels])
    np.testing.assert_array_equal(rows_sorted(*both), rows_sorted(whole.x, whole.labels))
    per_class = torch.bincount(whole.labels, minlength=10).double()
    in_test = torch.bincount(test.labels, minlength=10).double()
    assert ((in_test - 0.2 * per_class).abs() <= 1).all()  # stratified: a fifth of each class


def test_digits_split_is_the_same_at_every_resolution():
    small, big, original = load_digits(16, "test"), load_digits(32, "test"), load_digits(8, "test")
    assert torch.equal(small.labels, big.labels) and torch.equal(small.labels, original.labels)
    assert torch.equal(small.x, resize(original.x, 16)) and torch.equal(big.x, resize(original.x, 32))


def test_digits_test_split_is_pinned():
    # The split comes from scikit-learn's train_test_split. Should a scikit-learn release ever draw it differently,
    # classifiers cached from the old train split could have seen the new test images: fail here instead.
    test = load_digits(8, "test")
    digest = hashlib.sha256(test.x.numpy().tobytes() + test.labels.numpy().tobytes()).hexdigest()
    assert digest[:16] == "33576231b95e3be8"


def test_digits_split_follows_the_seed():
    assert torch.equal(load_digits(8, "test", seed=3).x, load_digits(8, "test", seed=3).x)
    other = load_digits(8, "test", seed=1)
    assert not torch.equal(load_digits(8, "test").x, other.x)
    assert "seed 1" in other.source


def test_digits_bad_arguments_are_messages():
    with pytest.raises(DataError) as e:
        load_digits(16, "validation")
    one_line_error(e, "'train', 'test' or 'all'", "validation")
    with pytest.raises(DataError) as e:
        load_digits(0)
    one_line_error(e, "resolution")


# ------------------------------------------------------------------------------------------- image folders
def write_png(path, width: int, height: int, value: int = 128, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fill = (value, value // 2, 255 - value) if mode == "RGB" else value
    Image.new(mode, (width, height), fill).save(path)


def test_image_folder_with_class_subfolders(tmp_path):
    for i in range(3):
        write_png(tmp_path / "dog" / f"{i}.png", 20, 12)
    for i in range(2):
        write_png(tmp_path / "cat" / "nested" / f"{i}.png", 12, 20, value=0)
    (tmp_path / ".DS_Store").write_bytes(b"\0")  # hidden files are not data
    data = load_image_folder(tmp_path, 8)
    assert data.x.shape == (5, 3, 8, 8) and data.x.dtype == torch.float32
    assert data.labels.tolist() == [0, 0, 1, 1, 1]  # labels follow sorted folder names: cat 0, dog 1
    assert data.num_classes == 2 and data.channels == 3 and data.resolution == 8
    assert data.x.min() >= -1 and data.x.max() <= 1
    assert torch.allclose(data.x[0, :, 0, 0], torch.tensor([0.0, 0.0, 255.0]) / 127.5 - 1)  # cat first: (0, 0, 255)
    assert "2 classes" in data.source and "8x8 px" in data.source


def test_image_folder_flat_grey_and_center_crop(tmp_path):
    # 30 x 10: black, white, black thirds; the center square crop is the white middle only.
    pixels = np.zeros((10, 30), dtype=np.uint8)
    pixels[:, 10:20] = 255
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).convert("RGB").save(tmp_path / "b.jpg", quality=95)
    write_png(tmp_path / "c.bmp", 16, 16)
    (tmp_path / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path, 4, channels=1)
    assert data.x.shape == (3, 1, 4, 4)
    assert data.labels is None and data.num_classes == 0
    assert data.x[0].min() == 1.0  # PNG: exactly white
    assert data.x[1].min() > 0.9  # JPEG: white up to compression


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path / "missing", 8)
    one_line_error(e, "missing", "no such folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path / "empty", 8)
    one_line_error(e, "empty", "empty folder")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path / "text", 8)
    one_line_error(e, "text", "no images", "PNG")
    write_png(tmp_path / "bad" / "good.png", 8, 8)
    (tmp_path / "bad" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path / "bad", 8)
    one_line_error(e, "broken.png", "cannot be read as an image")
    write_png(tmp_path / "mixed" / "loose.png", 8, 8)
    write_png(tmp_path / "mixed" / "cls" / "a.png", 8, 8)
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path / "mixed", 8)
    one_line_error(e, "loose.png", "cls")
    write_png(tmp_path / "classes" / "a" / "x.png", 8, 8)
    (tmp_path / "classes" / "b").mkdir()
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path / "classes", 8)
    one_line_error(e, "classes/b", "class folder without images")


# ------------------------------------------------------------------------------------------------- latents
def test_latents_npz_with_labels(tmp_path):
    latents = np.random.default_rng(0).standard_normal((6, 4, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "l.npz", latents=latents, labels=np.array([0, 1, 2, 0, 1, 2]))
    data = load_latents(tmp_path / "l.npz")
    assert data.x.shape == (6, 4, 4, 4) and not data.moments
    assert (data.channels, data.resolution, data.num_classes, data.scale) == (4, 4, 3, 0.18215)
    x, y = data.batch(torch.tensor([1, 3]))
    assert torch.allclose(x, torch.from_numpy(latents[[1, 3]]) * 0.18215)
    assert y.tolist() == [1, 0]
    assert load_latents(tmp_path / "l.npz", scale=1.0).batch(torch.tensor([0]))[0].equal(torch.from_numpy(latents[:1]))


def test_moments_npz_sample_the_posterior(tmp_path):
    rng = np.random.default_rng(1)
    mean = rng.standard_normal((4, 4, 8, 8)).astype(np.float32)
    sharp = np.concatenate([mean, np.full_like(mean, -100.0)], axis=1)  # logvar -100: the sample is the mean
    np.savez(tmp_path / "m.npz", moments=sharp, y=np.arange(4))
    data = load_latents(tmp_path / "m.npz")
    assert data.moments and data.channels == 4 and data.x.shape[1] == 8 and data.labels.tolist() == [0, 1, 2, 3]
    x, _ = data.batch(torch.arange(4))
    assert x.shape == (4, 4, 8, 8)
    assert (x - torch.from_numpy(mean) * 0.18215).abs().max() < 1e-6

    unit = np.concatenate([np.zeros_like(mean), np.zeros_like(mean)], axis=1)  # N(0, 1) posterior
    data = Dataset("unit", torch.from_numpy(unit), None, 0, moments=True, scale=1.0)
    first = data.batch(torch.arange(4), torch.Generator().manual_seed(5))[0]
    again = data.batch(torch.arange(4), torch.Generator().manual_seed(5))[0]
    other = data.batch(torch.arange(4), torch.Generator().manual_seed(6))[0]
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert abs(first.std().item() - 1.0) < 0.15 and abs(first.mean().item()) < 0.15


def test_latents_npy_and_explicit_moments(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 8, 2, 2), dtype=np.float16))
    data = load_latents(tmp_path / "a.npy")
    assert data.x.dtype == torch.float32 and data.labels is None and data.channels == 8 and not data.moments
    data = load_latents(tmp_path / "a.npy", moments=True, scale=1.0)
    assert data.moments and data.channels == 4


def test_latent_folder_in_numeric_order_with_labels(tmp_path):
    for i in range(12):
        np.save(tmp_path / f"{i}.npy", np.full((4, 2, 2), i, dtype=np.float32))
    np.save(tmp_path / "labels.npy", np.arange(12) % 3)
    data = load_latents(tmp_path, scale=1.0)
    assert data.x.shape == (12, 4, 2, 2)
    assert data.x[:, 0, 0, 0].tolist() == list(range(12))  # 10.npy after 9.npy
    assert data.labels.tolist() == [i % 3 for i in range(12)] and data.num_classes == 3


def test_pickled_latents_are_refused_with_how_to_convert(tmp_path):
    # U-ViT's extraction: np.save(f"{idx}.npy", (moments, label)) -> an object array, loadable only by unpickling.
    np.save(tmp_path / "0.npy", np.array((np.zeros((8, 4, 4)), 3), dtype=object), allow_pickle=True)
    with pytest.raises(DataError) as e:
        load_latents(tmp_path)
    one_line_error(e, "0.npy", "pickled", "np.savez(", "moments=")
    with pytest.raises(DataError) as e:
        load_data(str(tmp_path / "0.npy"), 32)
    one_line_error(e, "0.npy", "pickled")
    with open(tmp_path / "p.npy", "wb") as f:
        pickle.dump({"moments": [1, 2]}, f)
    with pytest.raises(DataError) as e:
        load_latents(tmp_path / "p.npy")
    one_line_error(e, "p.npy", "pickled")
    np.savez(tmp_path / "o.npz", moments=np.array([None], dtype=object))
    with pytest.raises(DataError) as e:
        load_latents(tmp_path / "o.npz")
    one_line_error(e, "o.npz", "pickled")


def test_bad_latent_files_are_messages(tmp_path):
    (tmp_path / "text.npy").write_text("hello")
    np.savez(tmp_path / "keys.npz", features=np.zeros((2, 4, 2, 2)))
    np.savez(tmp_path / "shape.npz", latents=np.zeros((2, 4, 2)))
    np.savez(tmp_path / "rect.npz", latents=np.zeros((2, 4, 2, 3)))
    np.savez(tmp_path / "odd.npz", moments=np.zeros((2, 3, 2, 2)))
    np.savez(tmp_path / "labels.npz", latents=np.zeros((2, 4, 2, 2)), labels=np.array([0, 1, 2]))
    np.savez(tmp_path / "nan.npz", latents=np.full((2, 4, 2, 2), np.nan))
    (tmp_path / "zip.npz").write_bytes(b"PK\x03\x04 torn")
    cases = {
        "text.npy": "not a NumPy file", "keys.npz": "'latents', 'moments', 'arr_0' (found: features)",
        "shape.npz": "(n, C, h, w)", "rect.npz": "square", "odd.npz": "even channel count",
        "labels.npz": "2 integers", "nan.npz": "NaN", "zip.npz": "cannot be read as a NumPy .npz",
    }
    for name, fragment in cases.items():
        with pytest.raises(DataError) as e:
            load_latents(tmp_path / name)
        one_line_error(e, name, fragment)
    with pytest.raises(DataError) as e:
        load_latents(tmp_path / "nothing.npz")
    one_line_error(e, "nothing.npz", "no such file")


# ---------------------------------------------------------------------------------------------- load_data
def test_load_data_picks_the_loader(tmp_path):
    assert load_data("digits", 16, "test").source.startswith("scikit-learn load_digits (test split, 360 images)")
    write_png(tmp_path / "images" / "a.png", 8, 8)
    images = load_data(str(tmp_path / "images"), 16, channels=1)
    assert images.x.shape == (1, 1, 16, 16)
    np.savez(tmp_path / "l.npz", latents=np.zeros((2, 4, 4, 4), dtype=np.float32))
    assert load_data(str(tmp_path / "l.npz"), 32).resolution == 4  # 32 px = 4x4 latents
    assert load_data(str(tmp_path / "l.npz"), 4).resolution == 4  # or the latent size itself
    (tmp_path / "folder").mkdir()
    np.save(tmp_path / "folder" / "0.npy", np.zeros((4, 4, 4), dtype=np.float32))
    assert load_data(str(tmp_path / "folder"), 32, scale=1.0).scale == 1.0


def test_load_data_errors(tmp_path):
    with pytest.raises(DataError) as e:
        load_data(str(tmp_path / "nowhere"), 32)
    one_line_error(e, "nowhere", "no such file or folder", "'digits'", ".npz")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(DataError) as e:
        load_data(str(tmp_path / "a.txt"), 32)
    one_line_error(e, "a.txt", "not a data file")
    np.savez(tmp_path / "l.npz", latents=np.zeros((2, 4, 4, 4), dtype=np.float32))
    with pytest.raises(DataError) as e:
        load_data(str(tmp_path / "l.npz"), 64)
    one_line_error(e, "l.npz", "4x4", "8x8 for 64 px")
    with pytest.raises(DataError) as e:
        load_data(str(tmp_path / "l.npz"), 32, split="test")
    one_line_error(e, "l.npz", "held-out 'test' split")
