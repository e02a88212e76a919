"""The storage rules of `storage.base` without Spark (issue 18, mutation testing): URI helpers
against hand-written answers, and `publish`/`recover` on real local folders through
`FsspecStore`, so `make mutate` can run them for every mutant in well under a second."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from fruits.storage.base import (
    MARKER,
    join,
    leftover_run,
    new_run_id,
    publish,
    quietly,
    recover,
    split_parent,
    staging_uri,
)
from fruits.storage.fsspec import FsspecStore, locate

DEAD, OTHER, MINE = "dead0000dead", "0123456789ab", "cafe00000001"


@pytest.fixture
def store(tmp_path: Path) -> FsspecStore:
    return FsspecStore(locate(str(tmp_path)))


def finished(path: Path, payload: str, *, marker: bool = True) -> Path:
    path.mkdir(parents=True)
    (path / "data.txt").write_text(payload)
    if marker:
        (path / MARKER).write_text("{}")
    return path


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        (("abfss://c@a/x/", "/out/", "m.json"), "abfss://c@a/x/out/m.json"),
        (("/tmp/a", "b"), "/tmp/a/b"),
        (("out",), "out"),
        (("dbfs:/", "out"), "dbfs:/out"),
        (("/data/BOX", "XL/"), "/data/BOX/XL"),  # only slashes are trimmed
    ],
)
def test_join_puts_one_slash_between_parts(parts, expected):
    assert join(*parts) == expected


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("abfss://c@a.dfs.core.windows.net/x/out", ("abfss://c@a.dfs.core.windows.net/x", "out")),
        ("abfss://c@a/x/out/", ("abfss://c@a/x", "out")),
        ("dbfs:/out", ("dbfs:/", "out")),
        ("file:///data/out", ("file:///data", "out")),
        ("s3a://bucket", ("s3a://", "bucket")),
        ("/out", ("/", "out")),
        ("/data/runs/out", ("/data/runs", "out")),
        ("out", (".", "out")),
        ("out/", (".", "out")),
        ("/d/BOX", ("/d", "BOX")),
    ],
)
def test_split_parent_matches_hand_written_answers(uri, expected):
    assert split_parent(uri) == expected


@pytest.mark.parametrize("uri", ["", "/", "///"])
def test_an_output_without_a_folder_name_is_one_line(uri):
    with pytest.raises(ValueError, match=r"^output must name a folder, got '/*'$"):
        split_parent(uri)


def test_staging_is_a_hidden_sibling_of_the_output():
    assert staging_uri("/data/out", MINE) == f"/data/.out.staging-{MINE}"
    assert staging_uri("dbfs:/out", MINE) == f"dbfs:/.out.staging-{MINE}"
    assert staging_uri("out", MINE) == f"./.out.staging-{MINE}"


def test_run_ids_are_twelve_hex_digits_and_differ():
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"[0-9a-f]{12}", i) for i in ids)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (f".o.staging-{OTHER}", ("staging", OTHER)),
        (f".o.old-{OTHER}", ("old", OTHER)),
        (f".o.v2.old-{OTHER}", None),  # the neighbour `o.v2`'s saved copy
        (".o.old-2024", None),  # a user's own backup
        (f".o.old-{OTHER}0", None),  # 13 digits
        (f".o.old-{OTHER[:-1]}", None),  # 11 digits
        (f".o.old-{OTHER.upper()}", None),
        (f"o.old-{OTHER}", None),
        (f".o.new-{OTHER}", None),
        (f"x.o.old-{OTHER}", None),
    ],
)
def test_leftover_run_takes_only_names_this_code_makes(entry, expected):
    assert leftover_run("o", entry) == expected


def test_publish_without_a_previous_output_moves_staging_in_place(store, tmp_path):
    staging = finished(tmp_path / f".out.staging-{MINE}", "new")
    out = tmp_path / "out"
    publish(store, str(staging), str(out), MINE)
    assert names(tmp_path) == ["out"]
    assert (out / "data.txt").read_text() == "new"


def test_publish_replaces_the_previous_output_and_leaves_nothing_beside_it(store, tmp_path):
    finished(tmp_path / "out", "old")
    staging = finished(tmp_path / f".out.staging-{MINE}", "new")
    publish(store, str(staging), str(tmp_path / "out"), MINE)
    assert names(tmp_path) == ["out"]
    assert (tmp_path / "out" / "data.txt").read_text() == "new"


class Exchanging(FsspecStore):
    """A store that can swap two folders in one step (as `HadoopStore` does on local disk),
    recording what the publish asked of it."""

    def __init__(self, root: Path, *, works: bool = True) -> None:
        super().__init__(locate(str(root)))
        self.works = works
        self.calls: list[tuple[str, ...]] = []

    def exchange(self, a: str, b: str) -> bool:
        self.calls.append(("exchange", a, b))
        if not self.works:
            return False
        tmp = a + ".swap"
        os.rename(a, tmp)
        os.rename(b, a)
        os.rename(tmp, b)
        return True

    def rename(self, src: str, dst: str) -> None:
        self.calls.append(("rename", src, dst))
        super().rename(src, dst)


def test_publish_swaps_in_one_step_where_the_store_can(tmp_path):
    store = Exchanging(tmp_path)
    out = finished(tmp_path / "out", "old")
    staging = finished(tmp_path / f".out.staging-{MINE}", "new")
    publish(store, str(staging), str(out), MINE)
    assert store.calls == [("exchange", str(staging), str(out))]
    assert names(tmp_path) == ["out"]
    assert (out / "data.txt").read_text() == "new"


def test_publish_falls_back_to_two_renames_when_the_swap_fails(tmp_path):
    store = Exchanging(tmp_path, works=False)
    out = finished(tmp_path / "out", "old")
    staging = finished(tmp_path / f".out.staging-{MINE}", "new")
    publish(store, str(staging), str(out), MINE)
    old = str(tmp_path / f".out.old-{MINE}")
    assert [c[0] for c in store.calls] == ["exchange", "rename", "rename"]
    assert store.calls[1:] == [("rename", str(out), old), ("rename", str(staging), str(out))]
    assert names(tmp_path) == ["out"]
    assert (out / "data.txt").read_text() == "new"


def test_publish_never_swaps_with_a_missing_output(tmp_path):
    store = Exchanging(tmp_path)
    staging = finished(tmp_path / f".out.staging-{MINE}", "new")
    publish(store, str(staging), str(tmp_path / "out"), MINE)
    assert [c[0] for c in store.calls] == ["rename"]
    assert names(tmp_path) == ["out"]


def test_recover_restores_the_previous_run_over_a_half_copied_output(store, tmp_path):
    finished(tmp_path / "out", "half", marker=False)
    old = finished(tmp_path / f".out.old-{DEAD}", "previous")
    finished(tmp_path / f".out.staging-{DEAD}", "unfinished", marker=False)
    restored = recover(store, str(tmp_path / "out"))
    assert restored == str(old)
    assert names(tmp_path) == ["out"]
    assert (tmp_path / "out" / "data.txt").read_text() == "previous"
    assert (tmp_path / "out" / MARKER).exists()


def test_recover_restores_when_the_output_is_gone(store, tmp_path):
    finished(tmp_path / f".out.old-{DEAD}", "previous")
    assert recover(store, str(tmp_path / "out")) == str(tmp_path / f".out.old-{DEAD}")
    assert names(tmp_path) == ["out"]
    assert (tmp_path / "out" / "data.txt").read_text() == "previous"


def test_recover_keeps_a_finished_output_and_removes_the_leftovers(store, tmp_path):
    finished(tmp_path / "out", "current")
    finished(tmp_path / f".out.old-{DEAD}", "previous")
    finished(tmp_path / f".out.staging-{DEAD}", "unfinished", marker=False)
    assert recover(store, str(tmp_path / "out")) is None
    assert names(tmp_path) == ["out"]
    assert (tmp_path / "out" / "data.txt").read_text() == "current"


def test_recover_never_restores_an_old_folder_without_its_marker(store, tmp_path):
    finished(tmp_path / "out", "half", marker=False)
    finished(tmp_path / f".out.old-{DEAD}", "broken", marker=False)
    assert recover(store, str(tmp_path / "out")) is None
    assert names(tmp_path) == ["out"]
    assert (tmp_path / "out" / "data.txt").read_text() == "half"


def test_recover_never_restores_from_a_staging_folder(store, tmp_path):
    finished(tmp_path / f".out.staging-{DEAD}", "finished but never published")
    assert recover(store, str(tmp_path / "out")) is None
    assert names(tmp_path) == []


def test_recover_limited_to_dead_runs_leaves_live_and_foreign_folders(store, tmp_path):
    finished(tmp_path / "out", "current")
    finished(tmp_path / f".out.staging-{DEAD}", "dead", marker=False)
    finished(tmp_path / f".out.staging-{OTHER}", "live", marker=False)
    finished(tmp_path / f".out.v2.old-{DEAD}", "neighbour's")
    finished(tmp_path / ".out.old-2024", "user's backup")
    assert recover(store, str(tmp_path / "out"), runs={DEAD}) is None
    assert names(tmp_path) == sorted(
        ["out", f".out.staging-{OTHER}", f".out.v2.old-{DEAD}", ".out.old-2024"]
    )


def test_recover_of_a_dead_run_restores_only_that_runs_copy(store, tmp_path):
    finished(tmp_path / f".out.old-{OTHER}", "another run's")
    finished(tmp_path / f".out.old-{DEAD}", "dead run's")
    assert recover(store, str(tmp_path / "out"), runs={DEAD}) == str(tmp_path / f".out.old-{DEAD}")
    assert names(tmp_path) == sorted(["out", f".out.old-{OTHER}"])
    assert (tmp_path / "out" / "data.txt").read_text() == "dead run's"


class SlashListing(FsspecStore):
    """A store that lists folders with a trailing slash (as some fsspec file systems do)."""

    def list(self, uri: str) -> list[str]:
        return [e + "/" for e in super().list(uri)]


def test_recover_reads_folder_names_listed_with_a_trailing_slash(tmp_path):
    finished(tmp_path / f".out.old-{DEAD}", "previous")
    finished(tmp_path / f".out.staging-{DEAD}", "unfinished", marker=False)
    store = SlashListing(locate(str(tmp_path)))
    assert recover(store, str(tmp_path / "out")) == str(tmp_path / f".out.old-{DEAD}")
    assert names(tmp_path) == ["out"]


def test_quietly_runs_the_clean_up_and_logs_its_failure_at_debug():
    calls = []

    def boom() -> None:
        calls.append(1)
        raise OSError("disk gone")

    class Keep(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    # a handler on the module's own logger: the CLI's logging set-up (other tests) may stop
    # records from reaching the root logger that caplog listens on
    logger, keep = logging.getLogger("fruits.storage.base"), Keep()
    level = logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.DEBUG)
    try:
        quietly(boom)
        quietly(lambda: calls.append(2))
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)
    assert calls == [1, 2]
    assert [r.getMessage() for r in keep.records] == ["clean-up failed"]
    assert keep.records[0].levelno == logging.DEBUG
    assert keep.records[0].exc_info is not None
