"""Storage safety under hostile conditions (issue 18): `recover` touches only the names this
code makes, the lease survives long runs and races, a take-over cleans only the dead run's
leftovers, and bad output names or a full disk are one clear error. Real folders through
Spark's Hadoop FileSystem, real threads, a real tmpfs, and Azurite for the blob lease."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from fruits.run_context import (
    STALE_LEASE_SECONDS,
    Lease,
    OutputError,
    RunContext,
    check_output_name,
    overlap,
)
from fruits.storage import MARKER, HadoopStore, publish, recover

DEAD, OTHER, MINE = "dead0000dead", "0123456789ab", "cafe00000001"  # new_run_id's format


@pytest.fixture()
def store(spark):
    return HadoopStore(spark)


def finished(path: Path, run_id: str = OTHER, payload: str = "old") -> Path:
    path.mkdir(parents=True)
    (path / "data.txt").write_text(payload)
    (path / MARKER).write_text(json.dumps({"run_id": run_id}))
    return path


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(".crc"))


def dead_pid() -> int:
    code = "import os; print(os.getpid())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout)


def write_lease(path: Path, run_id: str, **extra: object) -> None:
    record = {"run_id": run_id, "host": socket.gethostname(), "pid": dead_pid()}
    record.update({"started": time.time(), **extra})
    path.write_text(json.dumps(record))


# --- recover: exact names only ---------------------------------------------------------------


def test_recover_leaves_a_neighbours_saved_copy_and_a_users_backup_alone(store, tmp_path):
    """`o` has no marker; `o.v2`'s interrupted publish left `.o.v2.old-RUNID`, which a prefix
    test on `.o.` took for `o`'s own copy: it must stay where it is, as must the user's own
    `.o.old-2024` backup and anything else merely resembling our names."""
    finished(tmp_path / "o.v2", OTHER, "v2 data")
    finished(tmp_path / f".o.v2.old-{OTHER}", OTHER, "v2 saved copy")
    finished(tmp_path / ".o.old-2024", "backup", "user backup")
    (tmp_path / ".o.staging-mine").mkdir()
    (tmp_path / f".o.staging-{OTHER}x").mkdir()
    before = names(tmp_path)
    assert recover(store, str(tmp_path / "o")) is None
    assert names(tmp_path) == before
    assert (tmp_path / f".o.v2.old-{OTHER}" / "data.txt").read_text() == "v2 saved copy"
    assert (tmp_path / ".o.old-2024" / "data.txt").read_text() == "user backup"


def test_recover_restores_and_removes_only_its_own_names(store, tmp_path):
    finished(tmp_path / f".fruits-output.old-{DEAD}", DEAD, "previous")
    (tmp_path / f".fruits-output.staging-{DEAD}").mkdir()
    finished(tmp_path / ".fruits-output.old-2024", "mine", "user backup")
    out = tmp_path / "fruits-output"
    assert recover(store, str(out)) is not None
    assert (out / "data.txt").read_text() == "previous"
    assert names(tmp_path) == [".fruits-output.old-2024", "fruits-output"]


def test_recover_after_a_take_over_removes_only_the_dead_runs_leftovers(store, tmp_path):
    finished(tmp_path / "out")
    (tmp_path / f".out.staging-{DEAD}").mkdir()
    (tmp_path / f".out.staging-{OTHER}").mkdir()  # not the run whose lease was taken over
    recover(store, str(tmp_path / "out"), {DEAD})
    assert names(tmp_path) == [f".out.staging-{OTHER}", "out"]


class Observing(HadoopStore):
    """Looks for the output's marker, as a reader would, around every step of a publish."""

    def __init__(self, spark, output: Path) -> None:
        super().__init__(spark)
        self.output, self.seen = output, []

    def _look(self) -> None:
        self.seen.append((self.output / MARKER).exists())

    def rename(self, src, dst):
        self._look()
        super().rename(src, dst)
        self._look()

    def exchange(self, a, b):
        self._look()
        done = super().exchange(a, b)
        self._look()
        return done

    def delete(self, uri):
        self._look()
        super().delete(uri)
        self._look()


@pytest.mark.skipif(sys.platform != "linux", reason="renameat2 is Linux's")
def test_a_local_publish_never_leaves_a_moment_without_an_output(spark, tmp_path):
    out = finished(tmp_path / "out", OTHER, "old")
    staging = finished(tmp_path / f".out.staging-{MINE}", MINE, "new")
    store = Observing(spark, out)
    publish(store, str(staging), str(out), MINE)
    assert store.seen and all(store.seen), store.seen
    assert (out / "data.txt").read_text() == "new"
    assert names(tmp_path) == ["out"]


# --- the lease -------------------------------------------------------------------------------


def test_a_live_run_keeps_its_lease_past_the_stale_age_by_its_heartbeat(store, tmp_path):
    """Started 25 h ago on another machine, heartbeat a moment ago: held, not taken over."""
    lock = tmp_path / ".out.lock"
    long_ago = time.time() - STALE_LEASE_SECONDS - 3600 * 24
    lock.write_text(
        json.dumps(
            {"run_id": OTHER, "host": "another-machine", "pid": 1, "started": long_ago}
            | {"heartbeat": time.time()}
        )
    )
    with pytest.raises(OutputError, match=f"being written by run {OTHER}"):
        Lease(store, str(tmp_path / "out"), MINE).acquire()
    assert json.loads(lock.read_text())["run_id"] == OTHER
    # and without a heartbeat for longer than the stale age it is a dead run's
    lock.write_text(
        json.dumps({"run_id": OTHER, "host": "another-machine", "pid": 1, "started": long_ago})
    )
    taker = Lease(store, str(tmp_path / "out"), MINE)
    taker.acquire()
    assert taker.taken_from is not None and taker.taken_from["run_id"] == OTHER
    taker.release()


def test_the_heartbeat_thread_renews_the_lease_and_stops_at_release(store, tmp_path):
    lock = tmp_path / ".out.lock"
    lease = Lease(store, str(tmp_path / "out"), MINE, heartbeat_seconds=0.05)
    lease.acquire()
    first = json.loads(lock.read_text())["heartbeat"]
    deadline = time.monotonic() + 60
    seen = first
    while seen == first and time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            seen = json.loads(lock.read_text())["heartbeat"]
        except ValueError:  # caught mid-rewrite
            pass
    assert seen > first
    lease.release()
    assert not lock.exists()


def test_an_empty_lease_is_held_unless_its_file_is_old(store, tmp_path):
    lock = tmp_path / ".out.lock"
    lock.write_text("")  # a run between its exclusive create and its write
    with pytest.raises(OutputError, match="being written by another run"):
        Lease(store, str(tmp_path / "out"), MINE).acquire()
    assert lock.read_text() == ""
    old = time.time() - STALE_LEASE_SECONDS - 60
    os.utime(lock, (old, old))
    taker = Lease(store, str(tmp_path / "out"), MINE)
    taker.acquire()
    assert json.loads(lock.read_text())["run_id"] == MINE
    taker.release()


class Interleaved(HadoopStore):
    """Two takers of one dead lease, forced into the worst order: B reads the dead lease
    before A replaces it, and B deletes only after A's new lease is written."""

    def __init__(self, spark, role: str, events: dict[str, threading.Event]) -> None:
        super().__init__(spark)
        self.role, self.events = role, events

    def read_text(self, uri: str) -> str:
        text = super().read_text(uri)
        if self.role == "B" and uri.endswith(".lock"):
            self.events["b_read"].set()
        return text

    def delete(self, uri: str) -> None:
        if uri.endswith(".lock"):
            wait_for = "b_read" if self.role == "A" else "a_created"
            self.events[wait_for].wait(timeout=20)
        super().delete(uri)

    def create_new(self, uri: str, text: str) -> bool:
        made = super().create_new(uri, text)
        if made and self.role == "A" and uri.endswith(".lock"):
            self.events["a_created"].set()
        return made


def test_two_takers_of_one_dead_lease_never_both_hold_it(spark, tmp_path):
    write_lease(tmp_path / ".out.lock", DEAD)
    events = {name: threading.Event() for name in ("b_read", "a_created")}
    leases = {
        role: Lease(Interleaved(spark, role, events), str(tmp_path / "out"), run)
        for role, run in (("A", MINE), ("B", OTHER))
    }
    errors: dict[str, BaseException] = {}

    def take(role: str) -> None:
        try:
            leases[role].acquire()
        except OutputError as exc:
            errors[role] = exc

    threads = [threading.Thread(target=take, args=(role,)) for role in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    holders = [role for role, lease in leases.items() if lease.held]
    assert len(holders) == 1, (holders, errors)
    written = json.loads((tmp_path / ".out.lock").read_text())["run_id"]
    assert written == leases[holders[0]].run_id
    assert not (tmp_path / ".out.lock.takeover").exists()
    for lease in leases.values():
        lease.release()


def test_many_simultaneous_starts_on_a_free_local_lease_admit_one(tmp_path):
    """fsspec's local store: an O_EXCL create, not a check then a write."""
    from fruits.storage.fsspec import FsspecStore, locate

    for trial in range(10):
        out = str(tmp_path / f"out{trial}")
        got = concurrent_acquire(lambda: FsspecStore(locate(str(tmp_path))), out, 4)
        assert got == 1, trial


def test_many_simultaneous_starts_through_hadoop_on_local_disk_admit_one(spark, tmp_path):
    """Hadoop's local create(overwrite=false) checks, then opens: the lease uses O_EXCL."""
    for trial in range(10):
        got = concurrent_acquire(lambda: HadoopStore(spark), str(tmp_path / f"out{trial}"), 4)
        assert got == 1, trial


def concurrent_acquire(make_store, output: str, writers: int) -> int:
    barrier = threading.Barrier(writers)
    leases = [Lease(make_store(), output, uuid.uuid4().hex[:12]) for _ in range(writers)]

    def go(lease: Lease) -> None:
        barrier.wait()
        try:
            lease.acquire()
        except OutputError:
            pass

    threads = [threading.Thread(target=go, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    held = sum(lease.held for lease in leases)
    for lease in leases:
        lease.release()
    return held


# --- the run's surroundings --------------------------------------------------------------------


def test_a_take_over_cleans_the_dead_runs_staging_and_temp_folders_only(spark, tmp_path):
    import tempfile

    from fruits.config import PipelineConfig

    src = tmp_path / "in" / "Training" / "Kiwi"
    src.mkdir(parents=True)
    out = tmp_path / "out"
    finished(out)
    dead_tmp = Path(tempfile.mkdtemp(prefix=f"fruits-{DEAD}-"))
    (dead_tmp / "plots").mkdir()
    write_lease(tmp_path / ".out.lock", DEAD, local_dirs=[str(dead_tmp), "/etc"])
    (tmp_path / f".out.staging-{DEAD}").mkdir()
    (tmp_path / f".out.staging-{OTHER}").mkdir()
    cfg = PipelineConfig(input=str(tmp_path / "in"), output=str(out))
    with RunContext(cfg, spark) as run:
        assert run.lease.taken_from is not None
        assert not dead_tmp.exists()
        assert names(tmp_path) == [".out.lock", f".out.staging-{OTHER}", "in", "out"]
    assert os.path.isdir("/etc")
    assert names(tmp_path) == [f".out.staging-{OTHER}", "in", "out"]


@pytest.mark.parametrize("name", ["a:b", "x/a:b"])
def test_an_output_name_with_a_colon_is_refused_before_anything_is_created(spark, tmp_path, name):
    from fruits.config import PipelineConfig

    (tmp_path / "in").mkdir()
    before = names(tmp_path)
    cfg = PipelineConfig(input=str(tmp_path / "in"), output=str(tmp_path / name))
    with pytest.raises(OutputError, match="':'") as err:
        RunContext(cfg, spark)
    assert "\n" not in str(err.value)
    assert names(tmp_path) == before
    check_output_name("abfss://c@acct.dfs.core.windows.net/runs/out")  # a port or host is fine
    check_output_name("http://127.0.0.1:10000/devstoreaccount1/c/out")


def test_azure_spellings_of_one_place_are_compared_as_one(monkeypatch):
    account = "devstoreaccount1"
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey=a2V5;"
        f"BlobEndpoint=http://127.0.0.1:10000/{account};",
    )
    emulator = f"http://127.0.0.1:10000/{account}/c/photos"
    assert "inside the input" in overlap(emulator + "/plots", "az://c/photos")
    assert "inside the input" in overlap("az://c/photos/plots", emulator)
    assert overlap(f"abfss://c@{account}.dfs.core.windows.net/photos", "az://c/photos/") == (
        "is the input itself"
    )
    assert "contains the input" in overlap("az://c", emulator)
    assert overlap("az://c/photos-out", emulator) is None
    assert overlap("http://127.0.0.1:10000/elsewhere/c/photos/plots", emulator) is None


def test_a_full_disk_is_one_line_naming_the_output(store, tmp_path):
    disk = tmp_path / "tiny"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        big = tmp_path / "report.json"
        big.write_bytes(os.urandom(1024 * 1024))
        target = str(disk / ".out.staging-0123456789ab" / "report.json")
        with pytest.raises(OSError) as err:
            store.put(big, target)
        message = str(err.value)
        assert "no space left" in message and ".out.staging-" in message
        assert "\n" not in message and "Py4J" not in message
    finally:
        subprocess.run(["umount", str(disk)], check=False)


# --- Azure: a truly conditional create ---------------------------------------------------------


@pytest.fixture
def azure_container(azurite, monkeypatch):
    for name in (
        "AZURE_STORAGE_CONNECTION_STRING",
        "AZURE_STORAGE_ACCOUNT_KEY",
        "AZURE_STORAGE_SAS_TOKEN",
        "AZURE_STORAGE_ACCOUNT_NAME",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    name = f"lease-{uuid.uuid4().hex[:10]}"
    azurite.service().create_container(name)
    return name


@pytest.mark.azure
def test_simultaneous_starts_on_azure_admit_exactly_one_writer(azure_container):
    from fruits.storage.fsspec import FsspecStore, locate

    root = f"az://{azure_container}/runs"
    for trial in range(20):
        got = concurrent_acquire(lambda: FsspecStore(locate(root)), f"{root}/out{trial}", 2)
        assert got == 1, trial


@pytest.mark.azure
def test_an_azure_lease_of_a_dead_run_is_taken_over_once(azure_container):
    from fruits.storage.fsspec import FsspecStore, locate

    root = f"az://{azure_container}/runs"
    store = FsspecStore(locate(root))
    record = {"run_id": DEAD, "host": "gone", "pid": 1, "started": 0, "heartbeat": 0}
    assert store.create_new(f"{root}/.out.lock", json.dumps(record))
    assert not store.create_new(f"{root}/.out.lock", "{}")
    got = concurrent_acquire(lambda: FsspecStore(locate(root)), f"{root}/out", 3)
    assert got == 1


# --- odd file names: every file ends as a row ------------------------------------------------

ODD_NAMES = ("a.jpg", "_x.jpg", ".x.jpg", "_batch/b.jpg", ".hidden/c.jpg", "a:b.jpg", "x[1].jpg")


def odd_tree(root: Path) -> dict[str, bytes]:
    """Real JPEGs under Training/Kiwi named as Spark's listing and fsspec's globs mishandle."""
    from PIL import Image

    wrote = {}
    for n, name in enumerate(ODD_NAMES):
        path = root / "Training" / "Kiwi" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (n * 30, 100, 200)).save(path, format="JPEG")
        wrote[name] = path.read_bytes()
    return wrote


def contents(ingested) -> dict[str, bytes | None]:
    """name below Training/Kiwi -> bytes; each row labelled by its own folder, as a walk does."""
    from fruits.ingest import labelled

    rows = labelled(ingested).files.select("path", "label", "content").collect()
    got = {}
    for r in rows:
        name = r["path"].split("/Training/Kiwi/", 1)[1]
        assert r["label"] == (name.rpartition("/")[0] or "Kiwi"), r
        got[name] = r["content"]
    return got


def test_the_hadoop_reader_keeps_hidden_and_colon_names_with_their_bytes(spark, tmp_path):
    from fruits.sources.hadoop import HadoopSource
    from fruits.sources.local import LocalSource

    wrote = odd_tree(tmp_path / "in")
    got = HadoopSource(str(tmp_path / "in")).read(spark)
    assert contents(got) == wrote
    assert got.too_large.count() == 0
    walked = LocalSource(str(tmp_path / "in")).read(spark)  # the local walk's rule: all
    assert set(contents(walked)) == set(wrote)


def test_the_fsspec_reader_reads_names_that_look_like_globs(spark, tmp_path):
    from fruits.sources.fsspec import FsspecSource

    wrote = odd_tree(tmp_path / "in")
    (tmp_path / "in" / "Training" / "Kiwi" / "x1.jpg").write_bytes(b"not the file asked for")
    wrote["x1.jpg"] = b"not the file asked for"
    assert contents(FsspecSource(str(tmp_path / "in")).read(spark)) == wrote


@pytest.mark.azure
def test_an_azure_name_that_looks_like_a_glob_is_read(spark, azurite, azure_container):
    from fruits.sources.fsspec import FsspecSource

    blobs = azurite.service().get_container_client(azure_container)
    blobs.upload_blob("in/Training/Kiwi/x[1].jpg", b"bracketed")
    blobs.upload_blob("in/Training/Kiwi/x1.jpg", b"plain")
    got = contents(FsspecSource(f"az://{azure_container}/in").read(spark))
    assert got == {"x[1].jpg": b"bracketed", "x1.jpg": b"plain"}
