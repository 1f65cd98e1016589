"""The FER2013 data layer: layouts, validation messages, cache, description."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from md_tables import table_rows

from fer_tune.data.demo import DemoSpec, write_demo_csv
from fer_tune.data.describe import describe
from fer_tune.data.fer2013 import cache_path_for, load_fer
from fer_tune.data.leakage import rows_with_copy_in
from fer_tune.errors import UserError

ROW = " ".join(["0"] * 2304)


def _write(tmp_path: Path, text: str, name: str = "fer2013.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _good_lines() -> list[str]:
    return ["emotion,pixels,Usage"] + [
        f"{k % 7},{ROW},{u}" for k, u in enumerate(["Training"] * 7 + ["PublicTest"] * 2 + ["PrivateTest"] * 2)
    ]


def test_reads_demo_csv_into_uint8_splits(tiny_csv):
    data = load_fer(tiny_csv, use_cache=False)
    assert data.images.dtype == np.uint8 and data.images.shape == (420, 48, 48)
    assert data.split_sizes() == {"Training": 280, "PublicTest": 70, "PrivateTest": 70}
    assert set(np.unique(data.labels)) == set(range(7))
    x, y = data.role("val")
    assert len(x) == len(y) == 70


def test_pixels_parsed_in_row_major_order(tmp_path):
    pixels = np.arange(2304) % 256
    lines = _good_lines()
    lines[1] = "3," + " ".join(map(str, pixels)) + ",Training"
    data = load_fer(_write(tmp_path, "\n".join(lines) + "\n"), use_cache=False)
    assert np.array_equal(data.images[0].ravel(), pixels)
    assert data.labels[0] == 3


def test_icml_variant_with_leading_spaces(tmp_path):
    lines = ["emotion, Usage, pixels"] + [
        f"{k % 7}, {u}, {ROW}" for k, u in enumerate(["Training"] * 7 + ["PublicTest", "PrivateTest"])
    ]
    data = load_fer(_write(tmp_path, "\n".join(lines) + "\n", "icml_face_data.csv"), use_cache=False)
    assert data.split_sizes() == {"Training": 7, "PublicTest": 1, "PrivateTest": 1}


def test_train_csv_without_usage_holds_out_validation_and_says_so(tmp_path):
    lines = ["emotion,pixels"] + [f"{k % 7},{ROW}" for k in range(70)]
    _write(tmp_path, "\n".join(lines) + "\n", "train.csv")
    _write(tmp_path, "pixels\n" + ROW + "\n", "test.csv")  # Kaggle's test.csv has no labels
    data = load_fer(tmp_path, use_cache=False)
    assert data.split_sizes() == {"Training": 63, "Validation": 7}
    assert "test" not in data.roles
    assert any("no Usage column" in n for n in data.notes)
    with pytest.raises(UserError, match="no labelled test split"):
        data.role("test")


def test_image_folder_layout_merges_test(tmp_path):
    from PIL import Image

    for split, per in (("train", 10), ("test", 2)):
        for emotion in ("happy", "sad"):
            folder = tmp_path / split / emotion
            folder.mkdir(parents=True)
            for i in range(per):
                Image.fromarray(np.full((48, 48), i * 10, np.uint8)).save(folder / f"{i}.png")
    data = load_fer(tmp_path, use_cache=False)
    assert data.split_sizes() == {"Training": 18, "Validation": 2, "Test": 4}
    assert any("merges FER2013's PublicTest and PrivateTest" in n for n in data.notes)
    (tmp_path / "train" / "happy" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="broken.png: unreadable image"):
        load_fer(tmp_path, use_cache=False)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda L: ["emotion,pixels"] + L[1:], "emotion,pixels"),  # header without Usage but rows with it
        (lambda L: ["emotion,pixels,Usage,extra"] + [row + ",x" for row in L[1:]], "unexpected column"),
        (lambda L: ["feeling,pixels,Usage"] + L[1:], "missing column"),
        (
            lambda L: L[:3] + ["1," + " ".join(["0"] * 2303) + ",Training"] + L[4:],
            "line 4 .*2303 values, expected 2304",
        ),
        (lambda L: L[:3] + ["1," + " ".join(["0"] * 2305) + ",Training"] + L[4:], "line 4 .*2305 values"),
        (lambda L: L[:2] + ["1,abc " + " ".join(["0"] * 2303) + ",Training"] + L[3:], "line 3 .*'abc'.*not an integer"),
        (lambda L: L[:2] + ["1,256 " + " ".join(["0"] * 2303) + ",Training"] + L[3:], "line 3 .*256 is outside 0..255"),
        (lambda L: L[:2] + ["1,-1 " + " ".join(["0"] * 2303) + ",Training"] + L[3:], "line 3 .*-1"),
        (lambda L: L[:2] + ["7," + ROW + ",Training"] + L[3:], "line 3 .*emotion '7' is not a label 0..6"),
        (lambda L: L[:2] + ["1," + ROW + ",Validation"] + L[3:], "line 3 .*Usage 'Validation'"),
        (lambda L: [row for row in L if "PrivateTest" not in row], "split PrivateTest has no rows"),
        (lambda L: L[:1], "header but no rows"),
    ],
)
def test_bad_csv_gives_one_clear_message(tmp_path, mutate, message):
    path = _write(tmp_path, "\n".join(mutate(_good_lines())) + "\n")
    with pytest.raises(UserError, match=message) as info:
        load_fer(path, use_cache=False)
    assert str(path) in str(info.value)


def test_empty_binary_and_missing_files(tmp_path):
    with pytest.raises(UserError, match="empty"):
        load_fer(_write(tmp_path, ""), use_cache=False)
    binary = tmp_path / "fer.csv"
    binary.write_bytes(bytes(range(256)) * 10)
    with pytest.raises(UserError, match="binary file"):
        load_fer(binary, use_cache=False)
    with pytest.raises(UserError, match="no such file"):
        load_fer(tmp_path / "nope.csv")


def test_bad_row_count_mentions_how_many_more(tmp_path):
    lines = _good_lines()
    lines[2] = "9," + ROW + ",Training"
    lines[5] = "8," + ROW + ",Training"
    with pytest.raises(UserError, match=r"\(1 more bad rows after it\)"):
        load_fer(_write(tmp_path, "\n".join(lines) + "\n"), use_cache=False)


def test_cache_is_used_and_rebuilt_when_csv_changes(tmp_path, monkeypatch):
    import fer_tune.data.csv_layout as data_module

    csv = write_demo_csv(tmp_path / "fer2013.csv", DemoSpec(20, 5, 5, seed=3))
    first = load_fer(csv)
    assert cache_path_for(csv).is_file()
    with monkeypatch.context() as patched:  # a second load must not parse the CSV again
        patched.setattr(data_module, "_read_csv_frame", lambda path: pytest.fail("the CSV was parsed again"))
        second = load_fer(csv)
    assert np.array_equal(first.images, second.images) and np.array_equal(first.labels, second.labels)
    write_demo_csv(csv, DemoSpec(20, 5, 5, seed=4))
    os.utime(csv, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = load_fer(csv)
    assert not np.array_equal(first.images, third.images)


def test_read_only_folder_caches_under_user_cache(tmp_path, monkeypatch):
    csv = write_demo_csv(tmp_path / "ro" / "fer2013.csv", DemoSpec(5, 2, 2))
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    assert "fer-tune" in str(cache_path_for(csv)) and cache_path_for(csv).parent != csv.parent


def test_folder_without_write_bits_is_read_only_even_for_root(tmp_path):
    """CI lays the real data out without write bits and runs as root, whom os.access lets write anywhere."""
    csv = write_demo_csv(tmp_path / "ro" / "fer2013.csv", DemoSpec(5, 2, 2))
    csv.parent.chmod(0o555)
    try:
        assert cache_path_for(csv).parent != csv.parent
        load_fer(csv)
        assert sorted(p.name for p in csv.parent.iterdir()) == ["fer2013.csv"]
    finally:
        csv.parent.chmod(0o755)


def test_demo_data_is_deterministic(tmp_path):
    a = write_demo_csv(tmp_path / "a.csv", DemoSpec(5, 2, 2, seed=7)).read_bytes()
    b = write_demo_csv(tmp_path / "b.csv", DemoSpec(5, 2, 2, seed=7)).read_bytes()
    c = write_demo_csv(tmp_path / "c.csv", DemoSpec(5, 2, 2, seed=8)).read_bytes()
    assert a == b and a != c


def test_describe_counts_duplicates_and_leakage(tmp_path):
    distinct = lambda v: " ".join([str(v)] * 2304)
    lines = ["emotion,pixels,Usage"] + [f"{k},{distinct(k + 1)},Training" for k in range(7)]
    lines += [
        f"0,{distinct(1)},PublicTest",
        f"2,{distinct(100)},PublicTest",
        f"5,{distinct(1)},PrivateTest",
        f"3,{distinct(0)},PrivateTest",
    ]
    data = load_fer(_write(tmp_path, "\n".join(lines) + "\n"), use_cache=False)
    text = describe(data)
    assert "NOT the canonical" in text
    assert ["Training"] + ["1"] * 7 + ["7"] in table_rows(text)
    assert (
        "exact duplicate groups: 1 covering 3 rows; 1 groups span more than one split, 1 carry conflicting labels"
        in text
    )
    assert "PublicTest rows whose exact pixels also appear in Training: 1 of 2" in text
    assert "all-black images: 1" in text
    assert rows_with_copy_in(data, "PrivateTest").tolist() == [True, False]


def test_the_md5_is_hashed_while_the_file_is_read_and_kept_in_the_cache(tmp_path, monkeypatch):
    """A report names its data by md5: the loader hashes the decompressed content in the same pass as the
    parse and keeps it in its cache, so a report on FER2013 does not decompress 300 MB a second time."""
    import hashlib
    import lzma

    from fer_tune.data import describe as describe_module
    from fer_tune.data import fer2013

    plain = write_demo_csv(
        tmp_path / "demo.csv", DemoSpec(train_per_class=2, val_per_class=1, test_per_class=1, seed=3)
    )
    packed = tmp_path / "demo.csv.xz"
    packed.write_bytes(lzma.compress(plain.read_bytes()))
    expected = hashlib.md5(plain.read_bytes()).hexdigest()
    assert load_fer(packed).content_md5 == expected

    def refuse(path):
        raise AssertionError(f"{path} read again for its md5")

    monkeypatch.setattr(fer2013, "content_md5", refuse)
    assert fer2013.file_md5(packed) == expected and load_fer(packed).content_md5 == expected  # from the cache
    sentence, comparable = describe_module.data_identity(str(packed), demo=True)
    assert f"md5 {expected}" in sentence and not comparable
