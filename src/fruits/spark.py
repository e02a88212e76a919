"""SparkSession creation: embedded `local[*]` by default, whatever master spark-submit gives
otherwise, with the settings this pipeline relies on (documented in the README's table)."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from pyspark.sql import SparkSession

from fruits.azure import SPARK_REDACTION_REGEX
from fruits.config import ARROW_MAX_BYTES, ARROW_MAX_RECORDS, FILES_PER_PARTITION, cache_dir

# Embedded runs: the UI would listen on every interface and show the configuration; it is off
# unless asked for (`--conf spark.ui.enabled=true`); then it listens on the loopback interface
# only (Spark binds its UI to $SPARK_LOCAL_IP, else 0.0.0.0: `local_ip_env` sets it).
LOCAL_ONLY = {
    "spark.ui.enabled": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    # Python workers import the installed pyspark, not Spark's zips (fruits/daemon.py: a third
    # of the workers' CPU went to zipimport). Local only: a cluster's workers are its own.
    "spark.python.daemon.module": "fruits.daemon",
}


# Every session this module builds, unless the user or spark-submit set them: no console bar
# (it interleaves `[Stage 5:> (0 + 2) / 2]` fragments with our log lines; fruits.progress
# says the same in images), and no job-kill links in a UI that someone may enable.
BUILD_DEFAULTS = {
    "spark.ui.showConsoleProgress": "false",
    "spark.ui.killEnabled": "false",
}

# Spark's own log: ERROR by default (the CLI's `-v` asks for WARN). A log4j2 file given to the
# local JVM at launch, so start-up warnings (native-hadoop, hostname, BLAS) are never printed.
# The root stays at WARN at least, with the console's threshold at the level asked for: when
# the root's level differs from WARN, pyspark's start prints "Setting default log level to ..."
# and how to change it (two lines), whatever the file says of its shell loggers.
LOG4J2_TEMPLATE = """\
rootLogger.level = {root}
rootLogger.appenderRef.console.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{{yy/MM/dd HH:mm:ss}} %p %c{{1}}: %m%n%ex
appender.console.filter.threshold.type = ThresholdFilter
appender.console.filter.threshold.level = {level}
"""

LOG_LEVELS = ("OFF", "FATAL", "ERROR", "WARN", "INFO", "DEBUG", "TRACE", "ALL")


class JavaMissingError(RuntimeError):
    """Spark needs a JVM; say so in one line instead of a py4j stack trace."""


def check_java() -> None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return
    if shutil.which("java"):
        return
    raise JavaMissingError(
        "Java was not found: install a JDK 17 or 21"
        " (e.g. `apt-get install openjdk-17-jre-headless`) or set JAVA_HOME"
    )


def default_conf(
    *,
    arrow_max_records: int = ARROW_MAX_RECORDS,
    arrow_max_bytes: int = ARROW_MAX_BYTES,
    files_per_partition: int = FILES_PER_PARTITION,
) -> dict[str, str]:
    """Settings that bound memory per Arrow batch and size partitions by file count."""
    max_partition = 128 << 20
    return {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.execution.arrow.maxRecordsPerBatch": str(arrow_max_records),
        "spark.sql.execution.arrow.maxBytesPerBatch": str(arrow_max_bytes),
        "spark.sql.files.maxPartitionBytes": str(max_partition),
        # Small files count as this many bytes when packing partitions: ~N files per task.
        "spark.sql.files.openCostInBytes": str(max(4096, max_partition // files_per_partition)),
        # Listing: a Spark job per folder level lists the folders, but not one task per folder
        # (the default): with 141 class folders that is 280 tiny tasks, 3x slower locally.
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": "16",
        "spark.sql.adaptive.enabled": "true",
        "spark.python.worker.reuse": "true",
        "spark.sql.session.timeZone": "UTC",
        # Spark's default misses Azure's `fs.azure.account.key.*` and SAS tokens: masked in the
        # UI, its REST API and event logs.
        "spark.redaction.regex": SPARK_REDACTION_REGEX,
    }


def is_connect(spark: Any) -> bool:
    """A Spark Connect session: no SparkContext and no JVM in this process (Databricks
    serverless and shared clusters, `fruits run --remote sc://...`). Code that would reach the
    JVM (`sparkContext`, py4j) takes its Connect path instead."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


class Session:
    """The one adapter over the two kinds of SparkSession: classic (a JVM in this process, a
    SparkContext) and Spark Connect (a client; the JVM is on a server). Every module asks it
    rather than branching on the kind itself, so what Connect lacks is decided here once:
    job groups are tags there, nothing is broadcast (the object travels in the plan), no
    status tracker, no Hadoop FileSystem, no JVM to build models in."""

    def __init__(self, spark: SparkSession) -> None:
        self.spark = spark
        self.connect = is_connect(spark)

    @property
    def kind(self) -> str:
        return "connect" if self.connect else "classic"

    def context(self) -> Any | None:
        """The SparkContext (py4j: `_jvm`, `_jsc`), or None through Connect."""
        return None if self.connect else self.spark.sparkContext

    def hadoop(self) -> tuple[Any, Any] | None:
        """(the JVM, its Hadoop Configuration) to open FileSystems with, or None (Connect)."""
        sc = self.context()
        if sc is None:
            return None
        return sc._jvm, sc._jsc.hadoopConfiguration()

    def reads_local_files(self) -> bool:
        """Does the reading side see this machine's files? Locally, yes; a Connect server is
        trusted to run here when given a local path (its own error says otherwise)."""
        return self.connect or (self.spark.sparkContext.master or "").startswith("local")

    def master(self) -> str:
        if self.connect:  # the server's, as far as a client may read it
            return f"connect ({self.spark.conf.get('spark.master', None)})"
        return self.spark.sparkContext.master or ""

    def default_parallelism(self) -> int | None:
        return None if self.connect else self.spark.sparkContext.defaultParallelism

    def tag_jobs(self, group: str, description: str) -> None:
        """Every later job of this thread belongs to `group` (a tag through Connect)."""
        if self.connect:
            self.spark.addTag(group)
        else:
            self.spark.sparkContext.setJobGroup(group, description)

    def untag_jobs(self, group: str) -> None:
        if self.connect:
            self.spark.removeTag(group)
        else:
            self.spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]  # None clears it

    def describe(self, text: str | None) -> None:
        """The UI's description of the next jobs (None clears it); Connect has none."""
        if not self.connect:
            self.spark.sparkContext.setJobDescription(text)  # type: ignore[arg-type]  # None clears it

    def ship(self, value: Any) -> Any:
        """A read-only value for the executors: a broadcast, or through Connect the value
        itself (it travels inside the UDF). Receivers take both (features.WorkerCache)."""
        return value if self.connect else self.spark.sparkContext.broadcast(value)

    def status_tracker(self) -> Any | None:
        """Spark's status tracker at the driver, or None (Connect: the server's UI has it)."""
        return None if self.connect else self.spark.sparkContext.statusTracker()

    def dataframe(self, rows: list[Any], schema: Any, parts: int) -> Any:
        """Driver-side rows as a DataFrame of `parts` partitions."""
        if self.connect:  # no SparkContext: the rows travel in the plan
            return self.spark.createDataFrame(rows, schema).repartition(parts)
        return self.spark.createDataFrame(self.spark.sparkContext.parallelize(rows, parts), schema)


def remote_session(url: str, defaults: dict[str, str], overrides: dict[str, str]) -> SparkSession:
    """A Spark Connect session with our settings (see `connect_conf`)."""
    return connect_conf(SparkSession.builder.remote(url).getOrCreate(), defaults, overrides)


def connect_conf(
    spark: SparkSession, defaults: dict[str, str], overrides: dict[str, str]
) -> SparkSession:
    """Our settings for this session where a client may set them (runtime SQL settings such as
    the Arrow batch bounds, which bound a Python worker's memory); static ones stay the
    server's. Connect cannot tell a server default from an administrator's choice, so the
    pipeline's runtime defaults apply to its own session."""
    for key, value in {**defaults, **overrides}.items():
        _try_set(spark, key, value)
    return spark


def get_spark(
    *,
    master: str | None = None,
    remote: str | None = None,
    app_name: str = "fruits",
    defaults: dict[str, str] | None = None,
    overrides: dict[str, str] | None = None,
    driver_memory: str = "2g",
    log_level: str = "ERROR",
) -> SparkSession:
    """Reuse an active session (Databricks, notebooks, tests); otherwise build one.

    A master from `--master` wins; else the one spark-submit configured; else `local[*]`.
    `defaults` never replace a value the user or the cluster set explicitly; `overrides` do.
    With `remote` (`sc://host:port`), a Spark Connect session: no Java needed here.
    `log_level` is Spark's own log level in a session built here (a reused one keeps its own).
    """
    defaults = defaults or {}
    overrides = overrides or {}
    if remote:
        return remote_session(remote, defaults, overrides)
    check_java()
    dumping, options, logged = False, "", False
    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        spark = active
    else:
        submitted = _submitted_conf()
        builder = SparkSession.builder.appName(app_name)
        if master:
            builder = builder.master(master)
        elif "spark.master" not in submitted:
            builder = builder.master("local[*]").config("spark.driver.memory", driver_memory)
        if (master or submitted.get("spark.master") or "local").startswith("local"):
            for key, value in LOCAL_ONLY.items():
                if key not in submitted and key not in overrides:
                    builder = builder.config(key, value)
        if (master or "local").startswith("local") and "spark.master" not in submitted:
            # Local workers must run this interpreter (the one with our package installed).
            os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
            local_ip_env()
            if not os.environ.get("PYSPARK_GATEWAY_PORT"):
                archive = class_archive_options()
                options = " ".join(o for o in (archive, log4j_options(log_level)) if o)
                key = "spark.driver.defaultJavaOptions"
                if options and key not in overrides and key not in defaults:
                    builder = builder.config(key, options)
                    logged = "log4j2.configurationFile" in options
                    dumping = bool(archive) and "ArchiveClassesAtExit" in options.split()[0]
        for key, value in {**BUILD_DEFAULTS, **defaults}.items():
            if key not in submitted and key not in overrides:
                builder = builder.config(key, value)
        for key, value in overrides.items():
            builder = builder.config(key, value)
        spark = builder.getOrCreate()
        if not is_connect(spark) and log_level.upper() in LOG_LEVELS and not logged:
            spark.sparkContext.setLogLevel(log_level.upper())  # a submitted JVM from now on
        if dumping:
            _note_jvm_pid(spark, shlex.split(options)[0].split("=", 1)[1])
    if is_connect(spark):  # an active Connect session (a notebook on serverless compute)
        return connect_conf(spark, defaults, overrides)
    explicit = spark.sparkContext.getConf()
    for key, value in defaults.items():
        if not explicit.contains(key):
            _try_set(spark, key, value)
    for key, value in overrides.items():
        _try_set(spark, key, value)
    return spark


def local_ip_env() -> None:
    """An embedded driver binds to the loopback interface: Spark's UI (when enabled) listens
    on $SPARK_LOCAL_IP, else on every interface, and a hostname that resolves to 127.0.0.1
    makes Spark warn and pick another interface. A value the user exported wins."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


def java_option(name: str, value: str) -> str:
    """`name=value` as one JVM option in a Spark `*JavaOptions` string, which Spark splits on
    whitespace unless quoted: a cache folder with a space (`/home/Jane Doe/.cache`) used to
    split the option in two and the JVM refused to start (JAVA_GATEWAY_EXITED)."""
    text = f"{name}={value}"
    if not re.search(r"[\s\"'\\]", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def log4j_options(level: str) -> str | None:
    """`-Dlog4j2.configurationFile=<file>` for a local driver at `level` (a file written once
    into the cache folder), or None for Spark's default (WARN) or an unwritable cache."""
    level = level.upper()
    if level not in LOG_LEVELS or level == "WARN":
        return None
    root = level if LOG_LEVELS.index(level) > LOG_LEVELS.index("WARN") else "WARN"
    text = LOG4J2_TEMPLATE.format(root=root.lower(), level=level.lower())
    path = cache_dir() / f"log4j2-{level.lower()}.properties"
    try:
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}")
            tmp.write_text(text)
            os.replace(tmp, path)
    except OSError:
        return None
    return java_option("-Dlog4j2.configurationFile", str(path))


# JVM unified-logging tags of the class archive: a stale or foreign archive is simply not used,
# and dumping one lists every class it skips (hundreds of lines); neither is worth a word.
_QUIET_CDS = "-Xlog:cds=off -Xlog:cds+dynamic=off -Xlog:class+path=off"


def class_archive_options(directory: Path | None = None) -> str | None:
    """JVM options that start a local driver from a class-data archive (Java's AppCDS).

    Loading and verifying Spark's ~10,000 classes is most of a local session's start: measured
    on an idle 2-core Intel Xeon, session 4.9 s + first job 2.5 s without an archive, 3.1 s +
    1.4 s with one (fresh processes; `bench/session_start.py` repeats it). The first session
    writes the archive when its JVM exits (about 140 MB, `-XX:ArchiveClassesAtExit`, to a name
    of its own so concurrent runs never share a half-written file); the next one promotes it
    and every later one maps it. The file is keyed by the Java runtime and the Spark jars, so an
    upgrade starts a new one; the JVM ignores an archive that does not match its class path.
    Off with `FRUITS_JVM_ARCHIVE=0`, or when the user sets `spark.driver.defaultJavaOptions`.
    """
    if os.environ.get("FRUITS_JVM_ARCHIVE", "1") == "0":
        return None
    java = _java_binary()
    if java is None:
        return None
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    names = sorted(p.name for p in jars.glob("*.jar")) if jars.is_dir() else []
    stat = java.stat()
    key_text = f"{java}|{stat.st_size}|{stat.st_mtime_ns}|{pyspark.__version__}|{names}"
    key = hashlib.sha1(key_text.encode()).hexdigest()[:16]
    folder = directory or cache_dir() / "jvm"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    final = folder / f"spark-{key}.jsa"
    if not final.exists():
        _promote_finished_dump(folder, final)
    if final.exists():
        return f"{java_option('-XX:SharedArchiveFile', str(final))} {_QUIET_CDS}"
    if any(folder.glob(f"spark-{key}.*.jsa")):  # a run is writing one now
        return None
    dump = folder / f"spark-{key}.{os.getpid()}.jsa"
    return f"{java_option('-XX:ArchiveClassesAtExit', str(dump))} {_QUIET_CDS}"


def _note_jvm_pid(spark: SparkSession, dump: str) -> None:
    """Beside the archive being written, the pid of the JVM writing it (it dumps at exit)."""
    proc = getattr(spark.sparkContext._gateway, "proc", None)
    if proc is not None:
        try:
            Path(dump + ".jvm").write_text(str(proc.pid))
        except OSError:
            pass


def _alive(pid: str) -> bool:
    return pid.isdigit() and int(pid) != os.getpid() and Path(f"/proc/{pid}").exists()


def _promote_finished_dump(folder: Path, final: Path) -> None:
    """Rename an archive whose writer is done: the JVM noted beside it has exited (else: the
    Python process named in it has exited and the file is untouched for a minute)."""
    import time

    for dump in folder.glob(final.stem + ".*.jsa"):
        pid = dump.name.rsplit(".", 2)[1]
        note = Path(f"{dump}.jvm")
        try:
            if note.exists():
                if _alive(note.read_text().strip()):
                    continue
            elif _alive(pid) or time.time() - dump.stat().st_mtime < 60:
                continue
            note.unlink(missing_ok=True)
            st = dump.stat()
            if st.st_size > (1 << 20):
                os.replace(dump, final)
                return
            dump.unlink()
        except OSError:
            pass


def _java_binary() -> Path | None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return (Path(home) / "bin" / "java").resolve()
    found = shutil.which("java")
    return Path(found).resolve() if found else None


def _try_set(spark: SparkSession, key: str, value: str) -> None:
    try:
        spark.conf.set(key, value)
    except Exception:
        pass


def _submitted_conf() -> dict[str, str]:
    """Spark properties passed by spark-submit (it starts the JVM before our Python runs)."""
    if os.environ.get("PYSPARK_GATEWAY_PORT"):
        from pyspark import SparkConf

        return dict(SparkConf().getAll())
    return {}
