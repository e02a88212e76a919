import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from imagegen import jpeg_bytes, write

from fruits.ingest import InputError, labelled
from fruits.sources.hadoop import HadoopSource, check_input, glob_for
from fruits.sources.local import LocalSource, walk_local


def read_images(spark, uri, **kwargs):
    """One input through Spark's binaryFile source, labelled as a run labels it."""
    return labelled(HadoopSource(uri).read(spark, **kwargs))


def read_local(spark, uri, **kwargs):
    """One input through the local walk, labelled as a run labels it."""
    return labelled(LocalSource(uri).read(spark, **kwargs))


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


# --- the local walk (sources.local): links, unreadable folders, odd names ---


def names(rows, column: str = "path") -> set[str]:
    return {r[column] for r in rows}


@pytest.fixture()
def linked(tmp_path):
    """Training/{Apple,Banana,Cherry}, 2 images each, each folder holding a link to the next
    (Apple -> Banana -> Cherry -> Apple): once 2^40 paths, never finishing."""
    root = tmp_path / "in"
    jpg = jpeg_bytes()
    classes = ("Apple", "Banana", "Cherry")
    for cls in classes:
        for i in range(2):
            write(root / "Training" / cls / f"{i}.jpg", jpg)
    for here, there in zip(classes, classes[1:] + classes[:1], strict=True):
        (root / "Training" / here / f"to {there}").symlink_to(root / "Training" / there)
    return root, classes


def test_folders_linked_to_each_other_are_listed_once_with_their_real_labels(spark, linked):
    root, classes = linked
    got = read_local(spark, str(root))
    files = got.files.collect()
    expected = {f"file:{root}/Training/{c}/{i}.jpg" for c in classes for i in range(2)}
    assert names(files) == expected and len(files) == 6  # no duplicate, no path via a link
    assert {r["label"] for r in files} == set(classes)  # no class named after a link
    refused = {r["path"]: r["reason"] for r in got.too_large.collect()}
    pairs = zip(classes, classes[1:] + classes[:1], strict=True)
    links = {f"file:{root}/Training/{a}/to {b}": b for a, b in pairs}
    assert set(refused) == set(links)  # each skipped link counted, with its reason
    for link, target in links.items():
        assert refused[link].startswith("folder listed already:")
        assert refused[link].endswith(
            f"{root}/Training/{target}, whose images are listed once, there"
        )
    assert got.count() == 6 + 3


def test_a_link_to_a_folder_outside_is_followed_once(spark, tmp_path):
    outside, root = tmp_path / "elsewhere" / "kiwis", tmp_path / "in"
    for i in range(3):
        write(outside / f"{i}.jpg", jpeg_bytes())
    (root / "Training").mkdir(parents=True)
    (root / "Training" / "Kiwi").symlink_to(outside)
    (root / "Training" / "Kiwi again").symlink_to(outside)
    got = read_local(spark, str(root))
    files = got.files.collect()
    assert names(files) == {f"file:{root}/Training/Kiwi/{i}.jpg" for i in range(3)}
    assert {(r["label"], r["split"]) for r in files} == {("Kiwi", "train")}
    (row,) = got.too_large.collect()
    assert row["path"] == f"file:{root}/Training/Kiwi again"
    assert row["reason"].startswith("folder listed already:")


def test_an_over_long_folder_is_a_quarantine_row_not_a_silent_loss(tmp_path):
    """Deeper than PATH_MAX (4096 bytes): made through directory descriptors."""
    write(tmp_path / "in" / "Lemon" / "ok.jpg", jpeg_bytes())
    part = "d" * 250
    fd = os.open(tmp_path / "in" / "Lemon", os.O_RDONLY)
    try:
        for _ in range(20):
            os.mkdir(part, dir_fd=fd)
            inner = os.open(part, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        out = os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, dir_fd=fd)
        os.write(out, jpeg_bytes())
        os.close(out)
    finally:
        os.close(fd)
    listed, refused = walk_local(str(tmp_path / "in"), ["jpg"])
    assert [r[0] for r in listed] == [f"file:{tmp_path}/in/Lemon/ok.jpg"]
    assert len(refused) == 1
    path, reason, _, _ = refused[0]
    assert path.startswith(f"file:{tmp_path}/in/Lemon/{part}/") and len(path) > 4096
    assert reason == "cannot list folder: File name too long"


def test_an_unreadable_folder_is_a_quarantine_row(tmp_path):
    """Permissions apply even for root under setpriv (as in test_bad_inputs)."""
    from test_bad_inputs import without_root_privileges

    write(tmp_path / "in" / "Lemon" / "ok.jpg", jpeg_bytes())
    write(tmp_path / "in" / "Locked" / "hidden.jpg", jpeg_bytes())
    os.chmod(tmp_path / "in" / "Locked", 0)
    code = (
        "import json, sys; from fruits.sources.local import walk_local;"
        " l, r = walk_local(sys.argv[1], ['jpg']); print(json.dumps([[x[0] for x in l], r]))"
    )
    try:
        proc = subprocess.run(
            [*without_root_privileges(), sys.executable, "-c", code, str(tmp_path / "in")],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
    finally:
        os.chmod(tmp_path / "in" / "Locked", 0o755)
    listed, refused = json.loads(proc.stdout)
    assert listed == [f"file:{tmp_path}/in/Lemon/ok.jpg"]
    assert refused == [
        [f"file:{tmp_path}/in/Locked", "cannot list folder: Permission denied", None, None]
    ]


def test_a_file_name_that_is_not_utf8_is_a_readable_quarantine_row(spark, tmp_path):
    root = tmp_path / "in" / "Training" / "Pear"
    write(root / "fine.jpg", jpeg_bytes())
    with open(os.path.join(bytes(root), b"poire \xe9t\xe9.jpg"), "wb") as fh:  # Latin-1 name
        fh.write(jpeg_bytes())
    got = read_local(spark, str(tmp_path / "in"))  # through Arrow and Spark: no crash
    assert names(got.files.collect()) == {f"file:{root}/fine.jpg"}
    (row,) = got.too_large.collect()
    assert row["path"] == f"file:{root}/poire \\xe9t\\xe9.jpg"
    assert row["reason"].startswith("file name is not valid UTF-8")
    assert got.count() == 2


def test_a_100k_entry_label_map_labels_the_sample_through_a_join(spark, sample_dir, tmp_path):
    """2.8 MB of label map once meant a 200,000-literal Spark expression (minutes of planning);
    the labels must equal a plain dictionary lookup of each file's folder."""
    from fruits.config import PipelineConfig
    from fruits.ingest import read_sources

    folders = sorted(p.name for p in (sample_dir / "Training").iterdir())
    mapping = {f: folders[(i + 1) % len(folders)] for i, f in enumerate(folders)}  # rotated
    for i in range(100_000 - len(mapping)):
        mapping[f"unused folder {i:06d} with a long name"] = folders[i % len(folders)]
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    assert len(mapping) == 100_000 and (tmp_path / "map.json").stat().st_size > 2_800_000

    cfg = PipelineConfig(
        input=str(sample_dir), output=str(tmp_path / "out"), label_map=str(tmp_path / "map.json")
    )
    run = SimpleNamespace(
        cfg=cfg,
        spark=spark,
        inputs=[str(sample_dir)],
        io=SimpleNamespace(read_images=lambda s, uri, **kw: LocalSource(uri).read(s, **kw)),
    )
    got = read_sources(run).files.select("path", "label").collect()
    on_disk = sorted(p for p in sample_dir.rglob("*.jpg"))
    assert len(got) == len(on_disk) == 320
    expected = {f"file:{p}": mapping[p.parent.name] for p in on_disk}
    assert {r["path"]: r["label"] for r in got} == expected
