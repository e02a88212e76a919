"""Azurite (Microsoft's Azure Storage emulator) for the `azure` tests.

`.ci/run` starts one with `scripts/azurite.sh` and exports AZURITE_BLOB_PORT; without that
variable the fixture starts its own from node_modules on a free loopback port and stops it at
the end. When neither works the tests skip locally, and fail in CI instead (`CI` set to anything
but empty, `0` or `false`: `conftest.require_service`).

The account key below is the emulator's documented, public development key; it only opens the
local emulator. Tests still check it never appears in any output, as a stand-in for a real key.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def unavailable(reason: str) -> None:
    """Skip locally; fail in CI, where Azurite is part of the setup (conftest.require_service)."""
    from conftest import require_service

    require_service("Azurite", False, reason)


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Azurite:
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
            f"BlobEndpoint={self.endpoint};"
        )

    def env(self) -> dict[str, str]:
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}

    def service(self):
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def sas_token(self, hours: int = 1) -> str:
        """An account SAS (read, write, list, create, delete) signed with the dev key."""
        from datetime import UTC, datetime, timedelta

        from azure.storage.blob import AccountSasPermissions, ResourceTypes, generate_account_sas

        return generate_account_sas(
            ACCOUNT,
            KEY,
            resource_types=ResourceTypes(service=True, container=True, object=True),
            permission=AccountSasPermissions(
                read=True, write=True, list=True, create=True, delete=True, add=True
            ),
            expiry=datetime.now(UTC) + timedelta(hours=hours),
        )


def start() -> Iterator[Azurite]:
    """Use the CI's Azurite (AZURITE_BLOB_PORT) or start one for this test session."""
    given = os.environ.get("AZURITE_BLOB_PORT")
    if given:
        port = int(given)
        if not listening(port):
            unavailable(f"nothing listens on AZURITE_BLOB_PORT={port} (scripts/azurite.sh start)")
        yield Azurite(port)
        return
    binary = ROOT / "node_modules" / ".bin" / "azurite-blob"
    if not binary.exists():
        unavailable("Azurite is not installed: run `npm ci` (or `make azurite`)")
    if shutil.which("node") is None:
        unavailable("node is not installed (Azurite runs on Node.js)")
    port = free_port()
    data = tempfile.mkdtemp(prefix="azurite-test-")
    log = open(Path(data) / "azurite.log", "wb")
    proc = subprocess.Popen(
        [str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", data,
         "--skipApiVersionCheck", "--loose", "--silent"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                unavailable(f"Azurite did not start (see {data}/azurite.log)")
            time.sleep(0.2)
        yield Azurite(port)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # its own session: only what we started
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()
        shutil.rmtree(data, ignore_errors=True)


def assert_no_secret(*texts: str | bytes, secrets: tuple[str, ...] = ()) -> None:
    """No key, SAS signature or connection string in any of `texts` (str or raw bytes)."""
    import base64
    import urllib.parse

    needles: set[str] = {KEY, urllib.parse.quote(KEY, safe=""), *secrets}
    for s in secrets:
        needles.add(urllib.parse.quote(s, safe=""))
        if "sig=" in s:
            sig = s.split("sig=", 1)[1].split("&", 1)[0]
            needles |= {sig, urllib.parse.unquote(sig)}
    needles.add(base64.b64decode(KEY).hex())
    for i, text in enumerate(texts):
        blob = text if isinstance(text, bytes) else text.encode("utf-8", "replace")
        for needle in needles:
            assert needle.encode() not in blob, f"a secret leaked into captured text #{i}"
