"""Azure locations, credential selection and redaction: pure functions, no service needed
(one test reads the redaction regex with Spark's own code, on the shared session)."""

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
    from fruits.storage import publish
    from fruits.storage.fsspec import FsspecStore, locate

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


# --- redaction: shapes other modules rely on -----------------------------------------------------

SIG = "ZZsecretSignatureZZ0123%2Fabc%3D"
SAS_QUERY = f"sv=2024-08-04&se=2030-01-01T00%3A00%3A00Z&sr=b&sp=r&sig={SIG}"


@pytest.fixture
def no_secret_env(monkeypatch):
    """Shapes only: no credential variable whose value `redact` could look for."""
    for name in azure.SECRET_ENV:
        monkeypatch.delenv(name, raising=False)


def test_redact_hides_the_whole_sas_query(no_secret_env):
    url = f"https://acct.blob.core.windows.net/c/w.pt?{SAS_QUERY}"
    assert redact(url) == "https://acct.blob.core.windows.net/c/w.pt?***"
    assert redact(f"--weights {url} failed") == (
        "--weights https://acct.blob.core.windows.net/c/w.pt?*** failed"
    )
    # aiohttp / yarl spellings, the signature first, and a bare token
    for text in (
        f"403, message='Forbidden', url='{url}'",
        f"URL('{url}')",
        f"https://a.blob.core.windows.net/c/x?sig={SIG}&se=2030-01-01&sp=r",
        f"token: {SAS_QUERY}",
        f"?{SAS}",
    ):
        clean = redact(text)
        assert "ZZsecret" not in clean and "AbCdEfGh" not in clean, clean
        assert "sv=2024" not in clean and "sp=r" not in clean, clean
    # query strings without a signature stay readable
    assert redact("https://x/list?restype=container&comp=list") == (
        "https://x/list?restype=container&comp=list"
    )


def test_redact_hadoop_secret_settings(no_secret_env):
    """`--conf` spellings, as `k=v`, in a Python repr, and via spark.hadoop."""
    value = "not-shaped-like-a-key-but-secret"
    texts = {
        f"fs.azure.account.key.acct.dfs.core.windows.net={value}": "fs.azure.account.key.acct",
        f"--conf spark.hadoop.fs.azure.account.key.acct.blob.core.windows.net={value}": "--conf",
        f"{{'fs.azure.sas.c.acct.blob.core.windows.net': '{value}'}}": "fs.azure.sas.c",
        f"fs.azure.account.oauth2.client.secret.acct.dfs.core.windows.net: {value}": "oauth2",
        f"AccountName=acct;AccountKey={value};EndpointSuffix=core.windows.net": "AccountName",
    }
    for text, kept in texts.items():
        clean = redact(text)
        assert value not in clean and kept in clean and "***" in clean, clean
    untouched = "fs.azure.account.auth.type.acct.dfs.core.windows.net=SharedKey"
    assert redact(untouched) == untouched


def test_redact_bearer_token_and_keeps_credential_names(no_secret_env):
    assert redact("Authorization: Bearer eyJ0eXAiOiJKV1QiLCJhbGciOi.x.y") == (
        "Authorization: Bearer ***"
    )
    chain = "\tEnvironmentCredential: EnvironmentCredential authentication unavailable."
    assert redact(chain) == chain  # class names are not secrets


def test_redact_traceback_of_a_real_failed_download(no_secret_env):
    """A real HTTP 403 for a weights URL with a SAS, read the way `--weights` is: the message
    and every chained exception (aiohttp's carries the URL too) come out clean."""
    import http.server
    import threading
    import traceback

    from fruits.models import read_weights

    class Forbidden(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(403)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(Exception) as info:
            read_weights(f"http://127.0.0.1:{server.server_port}/c/w.pt?{SAS_QUERY}")
    finally:
        server.shutdown()
        server.server_close()
    raw = "".join(traceback.format_exception(info.value))
    assert "ZZsecret" in raw  # the secret is really there before redaction
    clean = azure.redact_traceback(info.value)
    assert "ZZsecret" not in clean and "Traceback" in clean and "/c/w.pt?***" in clean
    assert "ZZsecret" not in redact(info.value)


SECRET_SETTINGS = {
    "fs.azure.account.key.acct.dfs.core.windows.net": "base64key==",
    "spark.hadoop.fs.azure.sas.c.acct.blob.core.windows.net": "sv=1&sp=r",
    "fs.azure.account.oauth2.client.secret.acct.dfs.core.windows.net": "s3cr3t",
    "fs.azure.sas.fixed.token": "sv=1",
    "spark.executorEnv.AZURE_STORAGE_SAS_TOKEN": "sv=1",
    "spark.executorEnv.AZURE_STORAGE_CONNECTION_STRING": "AccountName=a;AccountKey=k",
    "spark.some.url": "https://a.blob.core.windows.net/c/x?sv=1&sig=abc",
    "spark.ssl.keyPassword": "pw",
}
PLAIN_SETTINGS = {
    "spark.sql.shuffle.partitions": "8",
    "spark.master": "local[2]",
    "spark.app.name": "fruits",
    "fs.azure.account.auth.type.acct.dfs.core.windows.net": "SharedKey",
    "fruits.input": "abfss://images@kansasfruit.dfs.core.windows.net/fruits-360",
}


def test_spark_redaction_regex_in_python():
    """Spark hides a setting when its key or its value matches; Python's `re` reads this
    regex the same way as Java's for the syntax it uses (checked against Java below)."""
    import re

    rx = re.compile(azure.SPARK_REDACTION_REGEX)
    for key, value in SECRET_SETTINGS.items():
        assert rx.search(key) or rx.search(value), key
    for key, value in PLAIN_SETTINGS.items():
        assert not rx.search(key) and not rx.search(value), key
    for default in ("spark.authenticate.secret", "my.password", "x.token", "s3.access.key"):
        assert rx.search(default), default  # Spark's default pattern is kept


def test_spark_redaction_regex_in_spark(spark):
    """The same settings through Spark's own redaction (`Utils.redact` with our pattern)."""
    jvm = spark.sparkContext._jvm
    conf = jvm.org.apache.spark.SparkConf(False).set(
        "spark.redaction.regex", azure.SPARK_REDACTION_REGEX
    )
    for key, value in {**SECRET_SETTINGS, **PLAIN_SETTINGS}.items():
        conf = conf.set(key, value)
    convert = jvm.scala.collection.JavaConverters
    pairs = convert.asScalaBufferConverter(jvm.java.util.ArrayList(list(conf.getAll())))
    out = jvm.org.apache.spark.util.Utils.redact(conf, pairs.asScala().toSeq())
    redacted = {p._1(): p._2() for p in convert.seqAsJavaListConverter(out).asJava()}
    for key in SECRET_SETTINGS:
        assert redacted[key] == "*********(redacted)", key
    for key, value in PLAIN_SETTINGS.items():
        assert redacted[key] == value, key
