"""`fruits upload` / `fruits download` against a real Azurite: idempotence, dry run, failures,
one-line errors, and no secret in anything they print or log."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from pathlib import Path

import pytest
from azurite_service import ACCOUNT, KEY, assert_no_secret
from typer.testing import CliRunner

from fruits.cli import app

pytestmark = pytest.mark.azure


@pytest.fixture
def tree(tmp_path) -> Path:
    """A small image-like folder: nested folders, a space in a name, an empty file."""
    root = tmp_path / "src"
    files = {
        "Training/Apple Red 1/0_100.jpg": os.urandom(3000),
        "Training/Apple Red 1/1_100.jpg": os.urandom(5000),
        "Training/Banana/0_100.jpg": os.urandom(7000),
        "Test/Banana/2_100.jpg": os.urandom(1000),
        "Test/Banana/empty.jpg": b"",
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture
def container(azurite) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    azurite.service().create_container(name)
    return name


AZURE_ENV = (
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_STORAGE_ACCOUNT_NAME",
)


def invoke(args, env, caplog=None):
    """The CLI in-process with exactly these Azure variables (others removed)."""
    if caplog is not None:
        caplog.set_level(logging.INFO)
    clean = dict.fromkeys(AZURE_ENV)
    return CliRunner().invoke(app, args, env={**clean, **env})


def output_of(result) -> str:
    """stdout and stderr, interleaved (Click 8.2+ `output`)."""
    return result.output


def digest_tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def container_sas(container: str, hours: int = 1) -> str:
    """A service SAS scoped to one container (read, create, write, list), the kind a data owner
    hands out: unlike an account SAS it cannot read the container's properties."""
    from datetime import UTC, datetime, timedelta

    from azure.storage.blob import ContainerSasPermissions, generate_container_sas

    return generate_container_sas(
        ACCOUNT,
        container,
        account_key=KEY,
        permission=ContainerSasPermissions(read=True, create=True, write=True, list=True),
        expiry=datetime.now(UTC) + timedelta(hours=hours),
    )


def test_upload_is_idempotent_and_resumes(azurite, container, tree, tmp_path, caplog):
    """SAS token + https (path-style emulator) URL; the second run transfers nothing; a changed
    file of the same size is found by its MD5."""
    sas = azurite.sas_token()
    env = {"AZURE_STORAGE_SAS_TOKEN": sas}
    dest = f"{azurite.endpoint}/{container}/fruits"
    first = invoke(["upload", str(tree), dest, "--workers", "3"], env, caplog)
    assert first.exit_code == 0, output_of(first)
    assert "5 file(s)" in first.output and "transferred 5 " in first.output
    names = sorted(b.name for b in azurite.service().get_container_client(container).list_blobs())
    assert "fruits/Training/Apple Red 1/0_100.jpg" in names and len(names) == 5

    second = invoke(["upload", str(tree), dest], env, caplog)
    assert second.exit_code == 0
    assert "transferred 0 (0 B), skipped 5" in second.output

    changed = tree / "Training/Banana/0_100.jpg"
    changed.write_bytes(os.urandom(7000))  # same size, new content
    third = invoke(["upload", str(tree), dest, "--no-progress"], env, caplog)
    assert "transferred 1 " in third.output and "skipped 4" in third.output
    assert_no_secret(first.output, second.output, third.output, caplog.text, secrets=(sas,))


def test_upload_dry_run_writes_nothing(azurite, container, tree, caplog):
    env = azurite.env()
    dest = f"az://{container}/dry"
    dry = invoke(["upload", str(tree), dest, "--dry-run"], env, caplog)
    assert dry.exit_code == 0, output_of(dry)
    assert "would transfer 5" in dry.output
    assert list(azurite.service().get_container_client(container).list_blobs()) == []
    missing = invoke(["upload", str(tree), "az://no-such-container/x", "--dry-run"], env)
    assert missing.exit_code == 2 and "not found" in output_of(missing)
    assert_no_secret(dry.output, missing.output, caplog.text)


def test_download_round_trip_and_skip(azurite, container, tree, tmp_path, caplog):
    """abfss:// form with the connection string's account; download lands identical files."""
    env = azurite.env()
    uri = f"abfss://{container}@{ACCOUNT}.dfs.core.windows.net/data"
    assert invoke(["upload", str(tree), uri], env).exit_code == 0
    out = tmp_path / "back"
    got = invoke(["download", uri, str(out)], env, caplog)
    assert got.exit_code == 0, output_of(got)
    assert digest_tree(out) == digest_tree(tree)
    again = invoke(["download", uri, str(out)], env, caplog)
    assert "transferred 0 (0 B), skipped 5" in again.output
    (out / "Test/Banana/2_100.jpg").write_bytes(b"local edit")
    fixed = invoke(["download", uri, str(out)], env, caplog)
    assert "transferred 1 " in fixed.output
    assert digest_tree(out) == digest_tree(tree)
    assert not list(out.rglob(".*.part-*"))
    assert_no_secret(got.output, again.output, fixed.output, caplog.text)


def test_failed_files_are_listed_and_exit_1(azurite, container, tree, caplog):
    (tree / "Test/Banana/broken.jpg").symlink_to(tree / "does-not-exist.jpg")
    result = invoke(["upload", str(tree), f"az://{container}/f"], azurite.env(), caplog)
    assert result.exit_code == 1
    text = output_of(result)
    assert "failed 1" in text and "FAILED Test/Banana/broken.jpg" in text
    assert "transferred 5 " in text  # the others went on
    assert_no_secret(text, caplog.text)


def test_location_errors_are_one_clean_line(azurite, tree, tmp_path):
    bad_key = azurite.connection_string.replace(KEY, KEY[:-8] + "AAAAAAA=")
    cases = {
        "container 'nope' not found": (azurite.env(), "az://nope/x"),
        "credential refused": ({"AZURE_STORAGE_CONNECTION_STRING": bad_key}, "az://nope/x"),
        "no storage account": ({}, "az://c/x"),
    }
    for expected, (env, uri) in cases.items():
        result = invoke(["upload", str(tree), uri], env)
        text = output_of(result)
        assert result.exit_code == 2, text
        errors = [line for line in text.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and expected in errors[0], text
        assert "Traceback" not in text
        assert_no_secret(text, secrets=(bad_key,))
    missing = invoke(["download", "az://nope/x", str(tmp_path / "d")], azurite.env())
    assert missing.exit_code == 2 and "container 'nope' not found" in output_of(missing)


def test_unreachable_endpoint(azurite, tree):
    from azurite_service import free_port

    port = free_port()  # nothing listens there
    cs = azurite.connection_string.replace(f":{azurite.port}/", f":{port}/")
    result = invoke(["upload", str(tree), "az://c/x"], {"AZURE_STORAGE_CONNECTION_STRING": cs})
    text = output_of(result)
    assert result.exit_code == 2 and "unreachable" in text, text
    assert_no_secret(text)


# --- containment: every downloaded file lands inside DEST ------------------------------------


def put_raw(azurite, container: str, encoded_name: str, data: bytes) -> None:
    """Put a blob whose name is sent percent-encoded as given: the SDK (and HTTP clients) fold
    `..` segments before sending, so this is how such names reach a real service."""
    import urllib.request

    url = f"{azurite.endpoint}/{container}/{encoded_name}?{container_sas(container)}"
    headers = {"x-ms-blob-type": "BlockBlob", "x-ms-version": "2021-08-06"}
    with urllib.request.urlopen(urllib.request.Request(url, data, headers, method="PUT")) as r:
        assert r.status == 201


def files_below(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_download_never_writes_outside_dest(azurite, container, tmp_path, caplog):
    """Blob names that would escape DEST are skipped with a reason, listed, and exit 1; the safe
    ones still land; nothing appears anywhere else under tmp_path, nor at the absolute path."""
    dest = tmp_path / "dest"
    outside = tmp_path / "outside"
    outside.mkdir()
    dest.mkdir()
    (dest / "link").symlink_to(outside, target_is_directory=True)  # a symlink inside DEST
    absolute = tmp_path / "abs" / "pwned.txt"
    client = azurite.service().get_container_client(container)
    names = {
        "run/ok/a.txt": "",
        f"run/{absolute}": "empty segment",  # run//tmp/...: today written at that absolute path
        "run/%2E%2E/encoded.txt": "'..'",  # a literal percent-encoded parent
        "run/C:/drive.txt": "drive",
        "run/x//y.txt": "empty segment",
        "run/tab\t.txt": "control character",
        "run/nl\n.txt": "control character",
        "run/link/through-symlink.txt": "outside",
    }
    for name in names:
        client.upload_blob(name, b"data", overwrite=True)
    put_raw(azurite, container, "run/%2E%2E/escape.txt", b"data")  # stored as run/../escape.txt
    names["run/../escape.txt"] = "'..'"
    assert set(names) <= {b.name for b in client.list_blobs()}

    result = invoke(["download", f"az://{container}/run", str(dest)], azurite.env(), caplog)
    text = output_of(result)
    assert result.exit_code == 1, text
    assert files_below(tmp_path) == {"dest/ok/a.txt"}, text
    assert not absolute.exists() and not list(outside.iterdir())
    refused = [line for line in text.splitlines() if line.startswith("FAILED")]
    assert len(refused) == len(names) - 1, text
    for name, reason in names.items():
        if reason:
            shown = name.removeprefix("run/").encode("unicode_escape").decode()
            assert any(shown in line and reason in line for line in refused), (name, text)
    assert "\t" not in text and "nl\n" not in text  # control characters are shown escaped
    assert "transferred 1 " in text

    # a dry run reports the same names; no link in this DEST, so link/... is fine there
    dry_args = ["download", f"az://{container}/run", str(tmp_path / "dry"), "--dry-run"]
    dry = invoke(dry_args, azurite.env())
    assert dry.exit_code == 1 and "would transfer 2 " in dry.output, dry.output
    assert dry.output.count("FAILED") == len(names) - 2
    assert not (tmp_path / "dry").exists()


def test_blob_name_checks():
    """The rules on their own, including what Azurite cannot store (it turns `\\` into `/`
    and cannot list names with most control characters)."""
    from fruits.transfer import unsafe_name

    unsafe = {
        "a\\b.jpg": "backslash",
        "..\\..\\evil.jpg": "backslash",
        "bell\x07.jpg": "control character",
        "del\x7f.jpg": "control character",
        "c:evil.jpg": "drive",
        "x/D:/y.jpg": "drive",
        "../up.jpg": "'..'",
        "a/%2e%2E/b.jpg": "'..'",
        "a/%252E%252E/b.jpg": "'..'",  # encoded twice
        "a/%2F..%2Fb.jpg": "'..'",  # an encoded separator hides the segment
        "./a.jpg": "'.'",
        "/etc/passwd": "empty segment",
        "a//b.jpg": "empty segment",
        "dir/": "empty segment",
        "": "empty name",
    }
    for name, reason in unsafe.items():
        got = unsafe_name(name)
        assert got and reason in got, (name, got)
    for name in ("Apple Red 1/0_100.jpg", "a..b.jpg", "...jpg", "12:30.jpg", "caf%C3%A9.jpg"):
        assert unsafe_name(name) is None, name


# --- credentials -------------------------------------------------------------------------------


def test_container_sas_uploads_and_downloads(azurite, container, tree, tmp_path, caplog):
    """A container-scoped SAS (no account-level rights, e.g. no container properties) is
    enough for both directions: env variable with an https URL, and a SAS connection string."""
    sas = container_sas(container)
    dest = f"{azurite.endpoint}/{container}/sas"
    env = {"AZURE_STORAGE_SAS_TOKEN": sas}
    first = invoke(["upload", str(tree), dest], env, caplog)
    assert first.exit_code == 0, output_of(first)
    assert "transferred 5 " in first.output
    again = invoke(["upload", str(tree), dest], env, caplog)
    assert "transferred 0 (0 B), skipped 5" in again.output

    sas_cs = f"BlobEndpoint={azurite.endpoint};SharedAccessSignature={sas}"
    cs = {"AZURE_STORAGE_CONNECTION_STRING": sas_cs}
    out = tmp_path / "back"
    got = invoke(["download", f"az://{container}/sas", str(out)], cs, caplog)
    assert got.exit_code == 0, output_of(got)
    assert digest_tree(out) == digest_tree(tree)
    assert_no_secret(first.output, again.output, got.output, caplog.text, secrets=(sas,))


IDENTITY_ENV = (
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_USERNAME",
    "AZURE_PASSWORD",
    "AZURE_FEDERATED_TOKEN_FILE",
    "AZURE_AUTHORITY_HOST",
    "IDENTITY_ENDPOINT",
    "IDENTITY_HEADER",
    "MSI_ENDPOINT",
    "MSI_SECRET",
)


@pytest.mark.parametrize("direction", ["upload", "download"])
def test_no_credential_is_one_line(direction, tree, tmp_path):
    """No key, SAS or identity anywhere: one line naming what DefaultAzureCredential tried, not
    azure-identity's multi-line warnings once per retry. A real process, so every line it
    prints (logging included) is counted."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in (*AZURE_ENV, *IDENTITY_ENV)}
    uri = "abfss://c@fruitsnocredential.dfs.core.windows.net/x"
    args = [str(tree), uri] if direction == "upload" else [uri, str(tmp_path / "d")]
    proc = subprocess.run(
        [sys.executable, "-m", "fruits", direction, *args, "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    assert proc.returncode == 2, lines
    assert len(lines) == 1, "\n".join(lines)
    assert lines[0].startswith("error: no usable credential for account 'fruitsnocredential'")
    assert "EnvironmentCredential" in lines[0] and "ManagedIdentityCredential" in lines[0]
    assert "AZURE_STORAGE_SAS_TOKEN" in lines[0]


def test_download_from_a_missing_container_suggests_no_upload_flag(azurite, tmp_path):
    result = invoke(["download", "az://nope/x", str(tmp_path / "d")], azurite.env())
    text = output_of(result)
    assert result.exit_code == 2 and "container 'nope' not found" in text
    assert "--create-container" not in text and "nothing to download" in text


def test_upload_follows_a_folder_link_once_and_says_so(azurite, container, tree, tmp_path):
    """A linked folder outside is copied under the link's name; a link to a folder already
    copied is one line, not a second copy (nor a loop)."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "k.jpg").write_bytes(b"kiwi")
    (tree / "Training" / "Kiwi").symlink_to(outside, target_is_directory=True)
    (tree / "Test" / "again").symlink_to(tree / "Training", target_is_directory=True)
    result = invoke(["upload", str(tree), f"az://{container}/l"], azurite.env())
    text = output_of(result)
    assert result.exit_code == 0, text
    names = sorted(b.name for b in azurite.service().get_container_client(container).list_blobs())
    assert "l/Training/Kiwi/k.jpg" in names and len(names) == 6  # 5 + the linked one
    assert not any("/again/" in n for n in names)
    (line,) = [x for x in text.splitlines() if "not copied twice" in x]
    assert f"{tree}/Test/again -> {tree}/Training" in line
