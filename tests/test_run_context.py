"""Output rules, the lease and the publish protocol, on real folders through Spark's Hadoop
FileSystem (the store a local run writes with)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fruits.run_context import Lease, OutputError, check_output, overlap
from fruits.storage import MARKER, HadoopStore, publish, recover

R2, ZZ, YY = "0123456789ab", "feedfacecafe", "00000000beef"  # run ids as new_run_id makes them


@pytest.fixture()
def store(spark):
    return HadoopStore(spark)


def finished_output(path, run_id="r1", payload="old"):
    path.mkdir(parents=True)
    (path / "data.txt").write_text(payload)
    (path / MARKER).write_text(json.dumps({"run_id": run_id}))
    return path


def test_output_equal_to_inside_or_above_the_input_is_refused(tmp_path):
    src = tmp_path / "in"
    (src / "Kiwi").mkdir(parents=True)
    assert overlap(str(src), str(src)) == "is the input itself"
    assert "inside the input" in overlap(str(src / "out"), str(src))
    assert "contains the input" in overlap(str(tmp_path), str(src))
    assert overlap(str(tmp_path / "out"), str(src)) is None
    assert overlap(str(src) + "/", "file:" + str(src)) == "is the input itself"
    link = tmp_path / "link"
    link.symlink_to(src)
    assert overlap(str(link), str(src)) == "is the input itself"  # real paths are compared


def test_unsafe_outputs_are_refused_and_left_untouched(store, tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("keep me")
    with pytest.raises(OutputError, match="is a file"):
        check_output(store, str(afile), [str(tmp_path / "in")])
    mine = tmp_path / "photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(OutputError, match="not a finished fruits output"):
        check_output(store, str(mine), [str(tmp_path / "in")])
    forged = tmp_path / "forged"
    forged.mkdir()
    (forged / MARKER).write_text("not json")
    (forged / "x").write_text("x")
    with pytest.raises(OutputError, match="not a finished fruits output"):
        check_output(store, str(forged), [str(tmp_path / "in")])
    assert afile.read_text() == "keep me" and (mine / "holiday.jpg").read_bytes() == b"precious"


def test_new_empty_and_previous_outputs_are_accepted(store, tmp_path):
    check_output(store, str(tmp_path / "new"), [str(tmp_path / "in")])
    (tmp_path / "empty").mkdir()
    check_output(store, str(tmp_path / "empty"), [str(tmp_path / "in")])
    check_output(store, str(finished_output(tmp_path / "prev")), [str(tmp_path / "in")])


def test_a_second_writer_fails_fast_and_a_dead_writers_lease_is_taken_over(store, tmp_path):
    out = str(tmp_path / "out")
    first = Lease(store, out, "run-a")
    first.acquire()
    with pytest.raises(OutputError, match="being written by run run-a"):
        Lease(store, out, "run-b").acquire()
    first.release()
    assert not (tmp_path / ".out.lock").exists()

    code = "import os; print(os.getpid())"
    dead = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import socket
    import time

    (tmp_path / ".out.lock").write_text(json.dumps(
        {"run_id": "run-dead", "host": socket.gethostname(), "pid": int(dead.stdout),
         "started": time.time()}
    ))  # fmt: skip
    taker = Lease(store, out, "run-c")
    taker.acquire()
    assert json.loads((tmp_path / ".out.lock").read_text())["run_id"] == "run-c"
    taker.release()


def test_publish_replaces_a_previous_output(store, tmp_path):
    out = finished_output(tmp_path / "out")
    staging = finished_output(tmp_path / f".out.staging-{R2}", R2, "new")
    publish(store, str(staging), str(out), R2)
    assert (out / "data.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


class FailingSecondRename(HadoopStore):
    """The driver dies between the two renames of a publish (a store that cannot swap two
    folders in one step: HDFS, ADLS)."""

    exchange = None

    def __init__(self, spark):
        super().__init__(spark)
        self.renames = 0

    def rename(self, src, dst):
        self.renames += 1
        if self.renames == 2:
            raise KeyboardInterrupt("killed between the renames")
        super().rename(src, dst)


def test_a_publish_killed_between_renames_is_restored_by_the_next_writer(spark, store, tmp_path):
    out = finished_output(tmp_path / "out")
    staging = finished_output(tmp_path / f".out.staging-{R2}", R2, "new")
    with pytest.raises(KeyboardInterrupt):
        publish(FailingSecondRename(spark), str(staging), str(out), R2)
    assert not out.exists()  # the moment a reader would find nothing
    assert recover(store, str(out)) is not None
    assert (out / "data.txt").read_text() == "old" and (out / MARKER).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # leftovers removed


def test_recover_keeps_a_finished_output_and_removes_leftovers(store, tmp_path):
    out = finished_output(tmp_path / "out")
    finished_output(tmp_path / f".out.old-{ZZ}", ZZ, "older")
    (tmp_path / (".out.staging-" + YY)).mkdir()
    assert recover(store, str(out)) is None
    assert (out / "data.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def run_cli(*args, cwd=None):
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    cmd = [sys.executable, "-m", "fruits", "run", "--master", "local[1]", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, env=env)


def test_cli_refuses_the_input_as_output_in_one_line_and_deletes_nothing(tmp_path, sample_dir):
    import shutil

    src = tmp_path / "in"
    shutil.copytree(sample_dir / "Training" / "Kiwi 1", src / "Kiwi")
    before = sorted(p.name for p in (src / "Kiwi").iterdir())
    proc = run_cli("--input", str(src), "--output", str(src))
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is the input itself" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "at org.apache" not in proc.stderr
    assert sorted(p.name for p in (src / "Kiwi").iterdir()) == before
