"""Session creation: the JVM class archive that shortens a local start (fruits.spark)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fruits.spark import class_archive_options

CHILD = """
import json
from fruits.spark import get_spark
spark = get_spark()
args = list(spark.sparkContext._jvm.java.lang.management.ManagementFactory
            .getRuntimeMXBean().getInputArguments())
print(json.dumps({"args": args, "rows": spark.range(10).count()}))
"""


def _session(cache: Path) -> list[str]:
    env = {**os.environ, "FRUITS_CACHE": str(cache)}
    env.pop("FRUITS_JVM_ARCHIVE", None)
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["rows"] == 10
    assert "cds" not in out.stderr.lower(), out.stderr[-2000:]  # the archive says nothing
    return [a for a in got["args"] if "Archive" in a]


def _wait_for_dump(folder: Path, timeout: float = 120) -> None:
    """The JVM writes the archive after the Python process exits; wait for that JVM."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        notes = list(folder.glob("*.jvm"))
        if notes and not Path(f"/proc/{notes[0].read_text().strip()}").exists():
            return
        time.sleep(0.5)
    raise AssertionError(f"no finished archive in {folder}: {list(folder.iterdir())}")


def test_first_session_writes_the_archive_and_the_next_one_maps_it(tmp_path: Path) -> None:
    first = _session(tmp_path)
    assert first and first[0].startswith("-XX:ArchiveClassesAtExit=")
    folder = tmp_path / "jvm"
    _wait_for_dump(folder)
    second = _session(tmp_path)
    assert second and second[0].startswith("-XX:SharedArchiveFile=")
    archive = Path(second[0].split("=", 1)[1])
    assert archive.stat().st_size > 10 << 20  # a real archive, promoted under its final name
    assert [p.name for p in folder.iterdir()] == [archive.name]


def test_a_dump_still_being_written_is_left_alone(tmp_path: Path) -> None:
    first = class_archive_options(tmp_path)
    assert first is not None and "ArchiveClassesAtExit" in first
    dump = Path(first.split()[0].split("=", 1)[1])
    dump.write_bytes(b"\0" * (2 << 20))
    Path(f"{dump}.jvm").write_text(str(os.getppid()))  # a live process stands for the JVM
    assert class_archive_options(tmp_path) is None  # neither mapped nor written twice
    Path(f"{dump}.jvm").write_text("999999999")  # that JVM has exited
    promoted = class_archive_options(tmp_path)
    assert promoted is not None and promoted.startswith("-XX:SharedArchiveFile=")
    assert not dump.exists() and not Path(f"{dump}.jvm").exists()


def test_switched_off(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FRUITS_JVM_ARCHIVE", "0")
    assert class_archive_options(tmp_path) is None
    assert list(tmp_path.iterdir()) == []


WORKER_PATH = """
import json
from fruits.spark import get_spark
spark = get_spark()

def where(_):
    import sys
    import pyspark
    yield [pyspark.__file__, [p for p in sys.path if p.endswith(".zip") and "python/lib/" in p]]

print(json.dumps(spark.sparkContext.parallelize([0], 1).mapPartitions(where).collect()))
"""


def test_local_workers_import_the_installed_pyspark_not_sparks_zips(tmp_path: Path) -> None:
    env = {**os.environ, "FRUITS_JVM_ARCHIVE": "0"}
    out = subprocess.run(
        [sys.executable, "-c", WORKER_PATH], env=env, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-2000:]
    ((module, zips),) = json.loads(out.stdout.strip().splitlines()[-1])
    assert zips == [] and ".zip" not in module and module.endswith("__init__.py")


def test_bundled_zips_are_kept_where_nothing_else_provides_pyspark() -> None:
    from fruits.daemon import without_bundled_zips

    lib = os.path.join("/opt", "spark", "python", "lib")
    zips = [os.path.join(lib, "pyspark.zip"), os.path.join(lib, "py4j-0.10.9.9-src.zip")]
    assert without_bundled_zips([*zips, *sys.path]) == sys.path  # installed here: dropped
    assert without_bundled_zips([*zips, "/nonexistent"]) == [*zips, "/nonexistent"]


SPACE_CHILD = """
import json
from fruits.spark import get_spark
spark = get_spark(overrides={"spark.ui.enabled": "true"})
jvm = spark.sparkContext._jvm
args = list(jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getInputArguments())
port = int(spark.sparkContext.uiWebUrl.rsplit(":", 1)[1])
listening = []
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for row in open(table).read().splitlines()[1:]:
        local, state = row.split()[1], row.split()[3]
        if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
            listening.append(local.rsplit(":", 1)[0])
print(json.dumps({
    "args": args,
    "rows": spark.range(10).count(),
    "listening": listening,
    "kill": spark.sparkContext.getConf().get("spark.ui.killEnabled"),
    "console_bar": spark.sparkContext.getConf().get("spark.ui.showConsoleProgress"),
}))
"""


def test_a_cache_path_with_a_space_starts_a_quiet_session_whose_ui_is_loopback_only(
    tmp_path: Path,
) -> None:
    """B1: `FRUITS_CACHE=/home/Jane Doe/...` split the archive option in two and the JVM never
    started (JAVA_GATEWAY_EXITED). Also: a UI the user enables listens on 127.0.0.1 only, with
    no kill links; Spark's start-up warnings and console bar stay out of the terminal."""
    cache = tmp_path / "Jane Doe cache"
    env = {**os.environ, "FRUITS_CACHE": str(cache)}
    for key in ("FRUITS_JVM_ARCHIVE", "SPARK_LOCAL_IP"):
        env.pop(key, None)
    out = subprocess.run(
        [sys.executable, "-c", SPACE_CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["rows"] == 10
    archive = [a for a in got["args"] if "Archive" in a]
    assert archive and archive[0].split("=", 1)[1].startswith(str(cache / "jvm"))
    assert any(a.startswith("-Dlog4j2.configurationFile=" + str(cache)) for a in got["args"])
    # 127.0.0.1 in /proc/net/tcp's byte order, or as ::ffff:127.0.0.1 in tcp6; never 0.0.0.0
    loopback = {"0100007F", "0000000000000000FFFF00000100007F"}
    assert got["listening"] and set(got["listening"]) <= loopback, got["listening"]
    assert got["kill"] == "false" and got["console_bar"] == "false"
    noise = [ln for ln in out.stderr.splitlines() if "incubator modules" not in ln]
    assert noise == [], out.stderr[-3000:]
