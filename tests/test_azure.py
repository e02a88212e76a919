"""Azure locations, credential selection and redaction: pure functions, no service needed."""

from __future__ import annotations

import logging
import pickle

import pytest

from fruits import azure
from fruits.azure import AzureError, parse_uri, redact, resolve_credentials

KEY = "c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seS0wMTIzNDU2Nzg5YWJjZGVmZ2hpamtsbW5vcA=="
SAS = (
    "sv=2024-08-04&ss=b&srt=sco&sp=rwl&se=2030-01-01T00:00:00Z"
    "&sig=AbCdEfGhIjKlMnOpQrStUvWxYz%2F0123456789abcd%3D"
)


# --- URIs ---------------------------------------------------------------------------------------


def test_abfss_uri():
    loc = parse_uri("abfss://images@fruitsweu.dfs.core.windows.net/fruits-360/Training/")
    assert (loc.container, loc.account, loc.path) == ("images", "fruitsweu", "fruits-360/Training")
    assert loc.suffix == "core.windows.net"
    assert loc.blob_prefix == "images/fruits-360/Training"
    assert loc.blob_name("Apple/1.jpg") == "fruits-360/Training/Apple/1.jpg"
    assert loc.abfss() == "abfss://images@fruitsweu.dfs.core.windows.net/fruits-360/Training"


@pytest.mark.parametrize("scheme", ["abfs", "wasbs", "wasb"])
def test_other_hadoop_schemes(scheme):
    loc = parse_uri(f"{scheme}://c@acct.blob.core.windows.net/x")
    assert (loc.container, loc.account, loc.path) == ("c", "acct", "x")


def test_az_uri_has_no_account():
    loc = parse_uri("az://images/fruits-360")
    assert (loc.container, loc.account, loc.path) == ("images", None, "fruits-360")
    with pytest.raises(AzureError, match="AZURE_STORAGE_ACCOUNT_NAME"):
        loc.abfss()
    assert loc.abfss("acct") == "abfss://images@acct.dfs.core.windows.net/fruits-360"


def test_container_root():
    loc = parse_uri("az://images")
    assert (loc.path, loc.blob_prefix, loc.blob_name("a.jpg")) == ("", "images", "a.jpg")
    assert loc.child("a.jpg") == "az://images/a.jpg"


def test_https_blob_and_dfs_urls():
    loc = parse_uri("https://acct.blob.core.windows.net/images/fruits/Test")
    assert (loc.account, loc.container, loc.path) == ("acct", "images", "fruits/Test")
    assert loc.endpoint == "https://acct.blob.core.windows.net"
    dfs = parse_uri("https://acct.dfs.core.windows.net/images/fruits")
    assert dfs.endpoint == "https://acct.blob.core.windows.net"
    cn = parse_uri("https://acct.blob.core.chinacloudapi.cn/c/p")
    assert cn.suffix == "core.chinacloudapi.cn"
    assert cn.abfss() == "abfss://c@acct.dfs.core.chinacloudapi.cn/p"


def test_emulator_path_style_url():
    loc = parse_uri("http://127.0.0.1:10000/devstoreaccount1/images/sample")
    assert (loc.account, loc.container, loc.path) == ("devstoreaccount1", "images", "sample")
    assert loc.endpoint == "http://127.0.0.1:10000/devstoreaccount1"


@pytest.mark.parametrize(
    "uri",
    [
        "/local/folder",
        "relative/folder",
        "s3a://bucket/x",
        "https://example.com/images/x",
        "abfss://acct.dfs.core.windows.net/x",  # no container
        "az://",
        "https://acct.blob.core.windows.net/",  # no container
    ],
)
def test_not_azure(uri):
    assert not azure.is_azure_uri(uri)
    with pytest.raises(AzureError):
        parse_uri(uri)


def test_sas_in_url_is_refused_without_echoing_it():
    with pytest.raises(AzureError) as info:
        parse_uri(f"https://acct.blob.core.windows.net/c/p?{SAS}")
    assert "AZURE_STORAGE_SAS_TOKEN" in str(info.value)
    assert "AbCdEfGh" not in str(info.value)


# --- credentials -----------------------------------------------------------------------------


def conn(account="acct", endpoint=None):
    cs = f"DefaultEndpointsProtocol=https;AccountName={account};AccountKey={KEY};"
    return cs + (f"BlobEndpoint={endpoint};" if endpoint else "EndpointSuffix=core.windows.net")


def test_connection_string_wins():
    env = {"AZURE_STORAGE_CONNECTION_STRING": conn(), "AZURE_STORAGE_ACCOUNT_KEY": "other"}
    creds = resolve_credentials(parse_uri("az://c/p"), env)
    assert creds.kind == "connection_string"
    assert creds.account == "acct"
    assert creds.account_url == "https://acct.blob.core.windows.net"


def test_connection_string_for_another_account_is_not_used():
    env = {"AZURE_STORAGE_CONNECTION_STRING": conn("emulator"), "AZURE_STORAGE_SAS_TOKEN": SAS}
    creds = resolve_credentials(parse_uri("abfss://c@prod.dfs.core.windows.net/p"), env)
    assert (creds.kind, creds.account) == ("sas_token", "prod")
    assert creds.account_url == "https://prod.blob.core.windows.net"


def test_connection_string_with_endpoint_and_sas():
    cs = "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;SharedAccessSignature=" + SAS
    creds = resolve_credentials(parse_uri("az://c/p"), {"AZURE_STORAGE_CONNECTION_STRING": cs})
    assert (creds.kind, creds.account) == ("connection_string", "devstoreaccount1")
    assert creds.account_url == "http://127.0.0.1:10000/devstoreaccount1"


def test_malformed_connection_string():
    with pytest.raises(AzureError, match="malformed") as info:
        resolve_credentials(None, {"AZURE_STORAGE_CONNECTION_STRING": "AccountName=a;junk"})
    assert "junk" not in str(info.value)


def test_account_key_then_sas_then_default():
    loc = parse_uri("az://c/p")
    base = {"AZURE_STORAGE_ACCOUNT_NAME": "acct"}
    key = resolve_credentials(loc, {**base, "AZURE_STORAGE_ACCOUNT_KEY": KEY})
    assert (key.kind, key.account_key) == ("account_key", KEY)
    sas = resolve_credentials(loc, {**base, "AZURE_STORAGE_SAS_TOKEN": "?" + SAS})
    assert (sas.kind, sas.sas_token) == ("sas_token", SAS)  # leading "?" dropped
    default = resolve_credentials(loc, base)
    assert (default.kind, default.account_url) == ("default", "https://acct.blob.core.windows.net")


def test_uri_account_beats_env_account():
    env = {"AZURE_STORAGE_ACCOUNT_NAME": "other", "AZURE_STORAGE_ACCOUNT_KEY": KEY}
    creds = resolve_credentials(parse_uri("abfss://c@mine.dfs.core.windows.net/p"), env)
    assert creds.account == "mine"


def test_https_endpoint_is_kept():
    env = {"AZURE_STORAGE_SAS_TOKEN": SAS}
    loc = parse_uri("http://127.0.0.1:10000/devstoreaccount1/c/p")
    creds = resolve_credentials(loc, env)
    assert creds.account_url == "http://127.0.0.1:10000/devstoreaccount1"
    assert "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1" in creds.as_connection_string()


def test_no_account_is_one_clear_line():
    with pytest.raises(AzureError, match="no storage account"):
        resolve_credentials(parse_uri("az://c/p"), {})
    with pytest.raises(AzureError, match="no account is known") as info:
        resolve_credentials(parse_uri("az://c/p"), {"AZURE_STORAGE_ACCOUNT_KEY": KEY})
    assert KEY not in str(info.value)


def test_credentials_never_show_their_secrets():
    creds = resolve_credentials(None, {"AZURE_STORAGE_CONNECTION_STRING": conn()})
    for text in (repr(creds), str(creds), creds.describe(), f"{creds}", str([creds])):
        assert KEY not in text
    assert KEY in creds.secrets()
    assert pickle.loads(pickle.dumps(creds)) == creds  # shipped to executors in UDF closures


# --- redaction ---------------------------------------------------------------------------------


def test_redact_known_values(monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", KEY)
    monkeypatch.setenv("AZURE_STORAGE_SAS_TOKEN", SAS)
    text = f"failed with key {KEY} and token ?{SAS} at https://a.blob.core.windows.net/c"
    clean = redact(text)
    assert KEY not in clean and "AbCdEfGh" not in clean and "sv=2024" not in clean
    assert "https://a.blob.core.windows.net/c" in clean


def test_redact_shapes_without_env(monkeypatch):
    for name in azure.SECRET_ENV:
        monkeypatch.delenv(name, raising=False)
    samples = {
        f"DefaultEndpointsProtocol=https;AccountName=a;AccountKey={KEY};": KEY,
        f"GET https://a.blob.core.windows.net/c/x?{SAS} 403": "AbCdEfGhIjKlMnOp",
        "url=...&sig%3DZZZZsecretsignatureZZZZ&x": "ZZZZsecret",
        f"{{'account_key': '{KEY}'}}": KEY,
        "SharedAccessSignature=sv=1&sig=QQQQQQQQQQQQQQQQ;": "QQQQQQQQ",
    }
    for text, secret in samples.items():
        assert secret not in redact(text), text
    assert redact("nothing secret here") == "nothing secret here"


def test_redact_extra_values():
    assert redact("token=abcdefgh12345678 end", extra=["abcdefgh12345678"]) == "token=*** end"


def test_redact_conf_masks_secret_settings():
    cfg = {
        "input": "abfss://c@a.dfs.core.windows.net/x",
        "spark_conf": {
            "fs.azure.account.key.a.dfs.core.windows.net": KEY,
            "fs.azure.sas.token.provider.type": "",
            "spark.sql.shuffle.partitions": "8",
        },
        "extensions": ("jpg",),
    }
    out = azure.redact_conf(cfg)
    assert out["spark_conf"]["fs.azure.account.key.a.dfs.core.windows.net"] == "***"
    assert out["spark_conf"]["spark.sql.shuffle.partitions"] == "8"
    assert out["input"] == cfg["input"] and out["extensions"] == ("jpg",)


def test_log_filter_redacts_messages_and_tracebacks(monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", KEY)
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    logger = logging.getLogger("fruits.test_redaction")
    logger.propagate = False
    handler = Keep()
    logger.addHandler(handler)
    try:
        azure.install_log_redaction(logger)
        azure.install_log_redaction(logger)  # idempotent
        assert sum(isinstance(f, azure.RedactingFilter) for f in handler.filters) == 1
        logger.warning("connecting with %s", KEY)
        try:
            raise RuntimeError(f"bad key {KEY}")
        except RuntimeError:
            logger.exception("upload failed")
    finally:
        logger.removeHandler(handler)
    joined = "\n".join(records)
    assert KEY not in joined
    assert "upload failed" in joined and "RuntimeError: bad key ***" in joined


def test_explain_messages_are_one_line_and_clean():
    from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError

    loc = parse_uri("az://images/x")
    auth = ClientAuthenticationError(message=f"Server failed to authenticate. sig={KEY}")
    assert azure.explain(auth, loc, "acct").startswith("credential refused by account 'acct'")
    down = ServiceRequestError(message="Connection refused")
    assert "unreachable" in azure.explain(down, loc)
    missing = FileNotFoundError("images/x")
    assert azure.explain(missing, loc) == "not found (az://images/x)"
    other = azure.explain(RuntimeError(f"boom AccountKey={KEY}\nsecond line"))
    assert "\n" not in other and KEY not in other


def test_fsspec_store_on_local_files(tmp_path):
    """The Store protocol through fsspec, on the local file system (Azure: test_azure_pipeline)."""
    from fruits.fsspec_store import FsspecStore, locate
    from fruits.storage import publish

    root = str(tmp_path / "remote")
    store = FsspecStore(locate(root))
    src = tmp_path / "run"
    (src / "plots").mkdir(parents=True)
    (src / "report.json").write_text("{}")
    (src / "plots" / "a.png").write_bytes(b"png")
    store.put(src, f"{root}/.out.staging-1")
    assert store.exists(f"{root}/.out.staging-1/plots/a.png")
    publish(store, f"{root}/.out.staging-1", f"{root}/out", "1")
    assert sorted(store.list(root)) == [f"{root}/out"]
    store.put(src, f"{root}/.out.staging-2")
    publish(store, f"{root}/.out.staging-2", f"{root}/out", "2")  # replaces the old output
    assert sorted(store.list(f"{root}/out")) == [f"{root}/out/plots", f"{root}/out/report.json"]
    store.get(f"{root}/out", tmp_path / "back")
    assert (tmp_path / "back" / "plots" / "a.png").read_bytes() == b"png"
