import pytest
from imagegen import jpeg_bytes, write

from fruits.ingest import InputError, check_input, glob_for, read_images


def test_glob_matches_extensions_in_any_case():
    assert glob_for(["JPG", ".png"]) == "*.{[jJ][pP][gG],[pP][nN][gG]}"


@pytest.fixture()
def tree(tmp_path):
    jpg = jpeg_bytes()
    write(tmp_path / "Training" / "Apple Red 1" / "a.JPG", jpg)
    write(tmp_path / "Training" / "Apple Red 1" / "b.jpeg", jpg)
    write(tmp_path / "data" / "TEST" / "Banana 1" / "c.Png", jpg)
    write(tmp_path / "val" / "Kiwi" / "deep" / "d.jpg", jpg)
    write(tmp_path / "misc" / "Lemon" / "e.jpg", jpg)
    write(tmp_path / "misc" / "Lemon" / "notes.txt", b"not listed")
    write(tmp_path / "big" / "Pear" / "huge.jpg", b"x" * 5000)
    return tmp_path


def test_labels_and_splits_come_from_folders(spark, tree):
    got = read_images(spark, str(tree), max_file_bytes=4000)
    rows = {r["path"].rpartition("/")[2]: r for r in got.files.drop("content").collect()}
    assert set(rows) == {"a.JPG", "b.jpeg", "c.Png", "d.jpg", "e.jpg"}
    assert (rows["a.JPG"]["label"], rows["a.JPG"]["split"]) == ("Apple Red 1", "train")
    assert (rows["c.Png"]["label"], rows["c.Png"]["split"]) == ("Banana 1", "test")
    assert (rows["d.jpg"]["label"], rows["d.jpg"]["split"]) == ("deep", "val")
    assert (rows["e.jpg"]["label"], rows["e.jpg"]["split"]) == ("Lemon", "all")
    assert rows["a.JPG"]["length"] == len(jpeg_bytes())


def test_oversized_files_are_refused_with_a_reason_without_reading_them(spark, tree):
    got = read_images(spark, str(tree), max_file_bytes=4000)
    (row,) = got.too_large.collect()
    assert row["path"].endswith("big/Pear/huge.jpg")
    assert row["reason"] == "file too large: 5000 bytes exceeds the limit of 4000"


def test_missing_input_is_a_one_line_error(spark, tmp_path):
    with pytest.raises(InputError, match="input not found"):
        check_input(spark, str(tmp_path / "nope"))
