"""Checks of a run's configuration that need no Spark, made before a session starts.

A local Spark session takes 5-12 s to start; a typo in `--input` used to be reported only after
it (11.8 s on an idle 2-core machine, `time fruits run --input /nonexistent`). Everything that
can be judged from the configuration and the local file system is judged here first; the
stages keep their own checks (remote inputs, an empty folder, the output's lease).
"""

from __future__ import annotations

import os
import re

from fruits.common import has_scheme, local_path
from fruits.config import PipelineConfig


def remote_url(cfg: PipelineConfig) -> str | None:
    """The Spark Connect URL of the run: `--remote`, else $SPARK_REMOTE unless `--master`."""
    return cfg.remote or (None if cfg.master else os.environ.get("SPARK_REMOTE"))


# Settings the JVM prints before the session exists (so before redaction): Ivy logs every
# repository it adds. Other settings are redacted wherever fruits or Spark shows them.
_PRINTED_BY_THE_JVM = {"spark.jars.repositories"}
_URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@", re.IGNORECASE)


class PreflightError(ValueError):
    """A configuration that cannot run: one line for the user, before Spark starts."""


def check(cfg: PipelineConfig, *, remote: str | None = None) -> None:
    """Raise `PreflightError` for the first problem found: option combinations, local inputs
    that do not exist, an unreadable `--label-map` or `--weights`, an output that would
    overwrite an input. `remote` is the Spark Connect URL the run will use, if any."""
    if remote and cfg.master:
        raise PreflightError("--remote and --master exclude each other: give one")
    if cfg.refit and not cfg.incremental:
        raise PreflightError("--refit needs an incremental run (it reuses the stored features)")
    if cfg.verify_content and not cfg.incremental:
        raise PreflightError("--verify-content only applies with --incremental or --refit")
    if not 0.0 < cfg.reduce.variance <= 1.0:
        raise PreflightError(f"--pca-variance must be in (0, 1], got {cfg.reduce.variance}")
    if cfg.reduce.k is not None and cfg.reduce.k < 1:
        raise PreflightError(f"--pca-k must be at least 1, got {cfg.reduce.k}")
    if cfg.featurizer.image_size < 16:
        raise PreflightError(f"--image-size must be at least 16, got {cfg.featurizer.image_size}")
    if cfg.featurizer.batch_size < 1:
        raise PreflightError(f"--batch-size must be at least 1, got {cfg.featurizer.batch_size}")
    if not remote:  # a Connect server reads its own files, not this machine's
        for uri in cfg.inputs:
            path = local_path(uri)
            if path is not None and not os.path.exists(path):
                raise PreflightError(f"input not found: {path}")
    from fruits.recognition import label_map_paths, load_label_map

    maps = label_map_paths(cfg.label_map)
    files = [("--label-map", m) for m in maps] + [("--weights", cfg.featurizer.weights)]
    for option, value in files:
        path = local_path(value) if value else None
        if path is not None and not os.path.isfile(path):
            raise PreflightError(f"{option} {value}: file not found")
    local_maps = [local_path(m) for m in maps]
    if local_maps and None not in local_maps:
        load_label_map(
            [m for m in local_maps if m is not None]
        )  # parses (and merges) them: one line if one is not a map
    for key, value in cfg.spark_conf.items():
        if key in _PRINTED_BY_THE_JVM and _URL_PASSWORD.search(str(value)):
            # The JVM prints some settings before any redaction can see them (a Maven repository
            # "added as a remote repository"): a password must not be in a setting at all.
            raise PreflightError(
                f"--conf {key}: a password inside a URL would be printed by Spark; "
                "give the credentials to the service another way"
            )
    out = local_path(cfg.output)
    if out is not None and os.path.isfile(out):
        raise PreflightError(f"--output {cfg.output} is a file: choose a folder")
    for uri in cfg.inputs:  # remote ones are judged once the storage is known (check_output)
        why = overlap(cfg.output, uri) if out is not None and local_path(uri) is not None else None
        if why:
            raise PreflightError(f"--output {cfg.output} {why}: choose a folder outside {uri}")


def _comparable(uri: str) -> str:
    """A form in which `a` inside `b` is a string prefix test: real paths for local files, one
    spelling per Azure location (`az://c/x`, `abfss://c@acct.dfs...` and the emulator's
    `http://127.0.0.1:10000/acct/c/x` are `azure://acct/c/x`; `?` where the account is not
    known)."""
    from fruits import azure

    if uri.startswith("file:"):
        uri = "/" + uri[len("file:") :].lstrip("/")
    if not has_scheme(uri):
        return os.path.realpath(uri).rstrip("/") or "/"
    if azure.is_azure_uri(uri):
        loc = azure.parse_uri(uri)
        account = loc.account
        if account is None:
            try:
                account = azure.resolve_credentials(loc).account
            except Exception:
                account = None
        return "/".join(x for x in ("azure:/", account or "?", loc.container, loc.path) if x)
    return uri.rstrip("/")


def overlap(output: str, source: str) -> str | None:
    """Why `output` may not be written given an input `source`, or None when they are apart."""
    out, src = _comparable(output), _comparable(source)
    if out.startswith("azure://") and src.startswith("azure://"):
        out_acct, src_acct = out.split("/")[2], src.split("/")[2]
        if "?" in (out_acct, src_acct):  # an unknown account may be the other one
            out, src = out.replace(out_acct, "?", 1), src.replace(src_acct, "?", 1)
    if out == src:
        return "is the input itself"
    if out.startswith(src.rstrip("/") + "/"):
        return "is inside the input (the next run would read the outputs as images)"
    if src.startswith(out.rstrip("/") + "/"):
        return "contains the input (publishing replaces the whole folder)"
    return None
