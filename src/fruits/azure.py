"""Azure Storage locations and credentials: one place that parses the URI forms users paste,
picks a credential from the environment, and keeps secrets out of logs, errors and reports.

Accepted locations (all name a container and a path inside it):

- `abfss://container@account.dfs.core.windows.net/path` (ADLS Gen2, what Databricks uses;
  `abfs`, `wasb`, `wasbs` are accepted too),
- `az://container/path` (fsspec/adlfs style; the account comes from the environment),
- `https://account.blob.core.windows.net/container/path`, and the emulator's path-style
  `http://127.0.0.1:10000/account/container/path`.

Credentials, first match wins: `AZURE_STORAGE_CONNECTION_STRING`; `AZURE_STORAGE_ACCOUNT_KEY`;
`AZURE_STORAGE_SAS_TOKEN` (both with `AZURE_STORAGE_ACCOUNT_NAME` or the URI's account); else
`azure.identity.DefaultAzureCredential` (managed identity, workload identity, `az login`).
The Azure SDKs are imported inside functions so `import fruits` stays light.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

CONNECTION_STRING = "AZURE_STORAGE_CONNECTION_STRING"
ACCOUNT_NAME = "AZURE_STORAGE_ACCOUNT_NAME"
ACCOUNT_KEY = "AZURE_STORAGE_ACCOUNT_KEY"
SAS_TOKEN = "AZURE_STORAGE_SAS_TOKEN"
SECRET_ENV = (CONNECTION_STRING, ACCOUNT_KEY, SAS_TOKEN)
# Secrets of the other services a run talks to: their values are masked wherever they appear.
OTHER_SECRET_ENV = (
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
    "DATABRICKS_TOKEN",
    "DATABRICKS_CLIENT_SECRET",
    "AZURE_CLIENT_SECRET",
)

HADOOP_SCHEMES = ("abfss", "abfs", "wasbs", "wasb")
DEFAULT_SUFFIX = "core.windows.net"
REDACTED = "***"

log = logging.getLogger(__name__)

CredentialKind = Literal["connection_string", "account_key", "sas_token", "default"]


class AzureError(ValueError):
    """An Azure location or credential problem we can explain in one (secret-free) line."""


@dataclass(frozen=True)
class AzureLocation:
    """A parsed Azure Storage location; `uri` keeps the user's spelling for messages and paths."""

    uri: str
    container: str
    path: str  # inside the container, no leading or trailing slash; "" for the container root
    account: str | None = None
    endpoint: str | None = None  # blob service URL when the URI names it (https forms)
    suffix: str = DEFAULT_SUFFIX  # e.g. core.windows.net; sovereign clouds differ

    @property
    def blob_prefix(self) -> str:
        """`container/path`: how adlfs names this location."""
        return f"{self.container}/{self.path}".rstrip("/")

    def child(self, relative: str) -> str:
        """The user-facing URI of a file below this location."""
        return self.uri.rstrip("/") + "/" + relative.lstrip("/")

    def blob_name(self, relative: str = "") -> str:
        """The blob name (inside the container) of a file below this location."""
        return "/".join(p for p in (self.path, relative.strip("/")) if p)

    def abfss(self, account: str | None = None) -> str:
        """The same place as an `abfss://` URI, for Spark's Hadoop connector."""
        acct = account or self.account
        if not acct:
            raise AzureError(
                f"{redact(self.uri)} names no storage account: set {ACCOUNT_NAME} or use "
                "abfss://container@account.dfs.core.windows.net/path"
            )
        tail = f"/{self.path}" if self.path else "/"
        return f"abfss://{self.container}@{acct}.dfs.{self.suffix}{tail}"


def scheme_of(uri: str) -> str:
    head = uri.split("/", 1)[0]
    return head[:-1].lower() if head.endswith(":") else ""


def is_azure_uri(uri: str) -> bool:
    """True for every form `parse_uri` accepts (a cheap check, no credentials involved)."""
    try:
        parse_uri(uri)
    except AzureError:
        return False
    return True


def parse_uri(uri: str) -> AzureLocation:
    """Parse one of the accepted forms; anything else is an `AzureError` naming the forms."""
    scheme = scheme_of(uri)
    parts = urlsplit(uri)
    path = parts.path.strip("/")
    if scheme in HADOOP_SCHEMES:
        container, at, host = parts.netloc.partition("@")
        account, _, rest = host.partition(".")
        service, _, suffix = rest.partition(".")
        if not at or not container or not account or service not in ("dfs", "blob"):
            raise AzureError(
                f"not an Azure URI: {redact(uri)} (expected "
                f"{scheme}://container@account.dfs.core.windows.net/path)"
            )
        return AzureLocation(uri, container, path, account, None, suffix or DEFAULT_SUFFIX)
    if scheme in ("az", "abfs+az"):
        if not parts.netloc:
            raise AzureError(f"not an Azure URI: {redact(uri)} (expected az://container/path)")
        return AzureLocation(uri, parts.netloc, path)
    if scheme in ("https", "http"):
        host = (parts.hostname or "").lower()
        if parts.query:
            raise AzureError(
                "put the SAS token in AZURE_STORAGE_SAS_TOKEN, not in the URL "
                f"({redact(uri)}): URLs end up in logs and reports"
            )
        labels = host.split(".")
        if len(labels) >= 4 and labels[1] in ("blob", "dfs"):
            container, _, inner = path.partition("/")
            if not container:
                raise AzureError(f"the URL names no container: {redact(uri)}")
            service = "blob"
            endpoint = f"{scheme}://{labels[0]}.{service}.{'.'.join(labels[2:])}"
            if parts.port:
                endpoint += f":{parts.port}"
            return AzureLocation(uri, container, inner, labels[0], endpoint, ".".join(labels[2:]))
        if host in ("127.0.0.1", "localhost", "::1") or host.startswith("azurite"):
            account, _, rest = path.partition("/")
            container, _, inner = rest.partition("/")
            if not account or not container:
                raise AzureError(
                    f"expected {scheme}://host:port/account/container/path, got {redact(uri)}"
                )
            endpoint = f"{scheme}://{parts.netloc}/{account}"
            return AzureLocation(uri, container, inner, account, endpoint)
    raise AzureError(
        f"not an Azure Storage location: {redact(uri)} (use abfss://container@account."
        "dfs.core.windows.net/path, az://container/path or "
        "https://account.blob.core.windows.net/container/path)"
    )


def parse_connection_string(text: str) -> dict[str, str]:
    """`k=v;k=v` into a dict with the keys' usual case; values may contain `=` (keys, SAS)."""
    out: dict[str, str] = {}
    for item in text.split(";"):
        key, sep, value = item.strip().partition("=")
        if sep and key:
            out[key.strip()] = value.strip()
    return out


@dataclass(frozen=True, repr=False)
class Credentials:
    """What to authenticate with; secrets are kept out of `repr`, so logging one is safe."""

    kind: CredentialKind
    account: str | None
    account_url: str | None
    connection_string: str | None = None
    account_key: str | None = None
    sas_token: str | None = None

    def __repr__(self) -> str:
        return (
            f"Credentials(kind={self.kind!r}, account={self.account!r}, url={self.account_url!r})"
        )

    __str__ = __repr__

    def describe(self) -> str:
        """One secret-free line for logs: which kind of credential, which account."""
        return f"{self.kind} for account {self.account or '?'} ({self.account_url or 'default'})"

    def secrets(self) -> list[str]:
        found = [s for s in (self.account_key, self.sas_token) if s]
        if self.connection_string:
            cs = parse_connection_string(self.connection_string)
            found += [cs[k] for k in ("AccountKey", "SharedAccessSignature") if cs.get(k)]
            found.append(self.connection_string)
        return found

    def blob_service(self) -> Any:
        """An `azure.storage.blob.BlobServiceClient` for this account.

        Retries back off from 1 s rather than the SDK's 15 s, so an unreachable endpoint is
        reported in seconds, not minutes; throttling still gets four retries.
        """
        from azure.storage.blob import BlobServiceClient, ExponentialRetry

        opts: dict[str, Any] = {
            "retry_policy": ExponentialRetry(
                initial_backoff=1, increment_base=2, retry_total=4, retry_connect=1
            )
        }
        if self.kind == "connection_string":
            return BlobServiceClient.from_connection_string(self.connection_string or "", **opts)
        if self.kind == "account_key":
            cred: Any = {"account_name": self.account, "account_key": self.account_key}
            return BlobServiceClient(self.account_url or "", credential=cred, **opts)
        if self.kind == "sas_token":
            return BlobServiceClient(self.account_url or "", credential=self.sas_token, **opts)
        quiet = QuietDefaultCredential(self.account)
        return BlobServiceClient(self.account_url or "", credential=quiet, **opts)

    def filesystem(self) -> Any:
        """An `adlfs.AzureBlobFileSystem` (fsspec) for this account, never reading env itself."""
        from adlfs import AzureBlobFileSystem

        common: dict[str, Any] = {"skip_instance_cache": True}
        if self.kind == "default":
            host = urlsplit(self.account_url or "").netloc or None
            return AzureBlobFileSystem(
                account_name=self.account,
                credential=_default_credential(),
                account_host=host,
                **common,
            )
        return AzureBlobFileSystem(connection_string=self.as_connection_string(), **common)

    def as_connection_string(self) -> str:
        """Key and SAS credentials as a connection string: the one form that also carries a
        custom endpoint (the emulator, sovereign clouds) through adlfs."""
        if self.kind == "connection_string":
            return self.connection_string or ""
        scheme = urlsplit(self.account_url or "https://").scheme or "https"
        parts = [f"DefaultEndpointsProtocol={scheme}", f"BlobEndpoint={self.account_url}"]
        if self.kind == "account_key":
            parts += [f"AccountName={self.account}", f"AccountKey={self.account_key}"]
        elif self.kind == "sas_token":
            parts.append(f"SharedAccessSignature={(self.sas_token or '').lstrip('?')}")
        return ";".join(parts)


def _default_credential() -> Any:
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(exclude_interactive_browser_credential=True)


# azure-identity, and msal underneath it (managed identity, token cache)
_IDENTITY_LOGGERS = ("azure.identity", "msal")
_QUIET_LOCK = threading.Lock()


class QuietDefaultCredential:
    """`DefaultAzureCredential` that fails in one line.

    Left alone, each walk of the chain logs a 15-line warning (a line or two per credential
    tried) and the storage client's retries walk it again: 67 lines and 30 s before "credential
    refused" for a user who simply has none (measured with azure-identity 1.27).

    Here azure-identity's loggers are silenced while a token is fetched, the chain's failures
    are folded into one `AzureError` line (which the storage pipeline does not retry: it is not
    an azure-core error), and that failure is kept, so parallel workers do not walk the chain
    again.
    """

    def __init__(self, account: str | None = None) -> None:
        self.account = account
        self._inner: Any = None
        self._failure: AzureError | None = None

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        from azure.core.exceptions import ClientAuthenticationError

        with _QUIET_LOCK:  # serialises the chain; a fetched token is cached by the inner one
            if self._failure is not None:
                raise self._failure
            if self._inner is None:
                self._inner = _default_credential()
            loggers = [logging.getLogger(name) for name in _IDENTITY_LOGGERS]
            levels = [logger.level for logger in loggers]
            for logger in loggers:
                logger.setLevel(logging.CRITICAL + 1)
            try:
                return getattr(self._inner, method)(*args, **kwargs)
            except ClientAuthenticationError as exc:
                log.debug("DefaultAzureCredential: %s", exc)
                who = f"account {self.account!r}" if self.account else "the storage account"
                self._failure = AzureError(
                    f"no usable credential for {who}: {fold_credential_chain(str(exc))}; set "
                    f"{SAS_TOKEN}, {ACCOUNT_KEY} or {CONNECTION_STRING}, or run az login"
                )
                raise self._failure from None
            finally:
                for logger, level in zip(loggers, levels, strict=True):
                    logger.setLevel(level)

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        return self._call("get_token", *scopes, **kwargs)

    def get_token_info(self, *scopes: str, options: Any = None) -> Any:
        return self._call("get_token_info", *scopes, options=options)

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()


_CHAIN_LINE = re.compile(r"^\s*(\w+Credential):\s*(.*)$")


def fold_credential_chain(message: str) -> str:
    """azure-identity's multi-line "Attempted credentials:" report as one line:
    `DefaultAzureCredential tried EnvironmentCredential (environment variables are not fully
    configured), ManagedIdentityCredential (unavailable), ...`. Other messages: first line."""
    tried: list[str] = []
    for line in message.splitlines():
        m = _CHAIN_LINE.match(line)
        if not m:
            continue
        name, reason = m.groups()
        reason = re.sub(r"^\w+Credential\b", "", reason).strip()  # "<itself> unavailable."
        for lead in ("authentication unavailable.", "unavailable."):
            reason = reason.removeprefix(lead).strip()
        reason = re.split(r"(?<=[a-z0-9'])\.(?:\s|$)", reason, maxsplit=1)[0].strip(" .")
        tried.append(f"{name} ({reason or 'unavailable'})")
    if not tried:
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        return redact(lines[0] if lines else "no credential available")
    return redact("DefaultAzureCredential tried " + ", ".join(tried))


def _connection_endpoint(cs: Mapping[str, str]) -> tuple[str | None, str | None]:
    account = cs.get("AccountName")
    endpoint = cs.get("BlobEndpoint")
    if not endpoint and account:
        protocol = cs.get("DefaultEndpointsProtocol", "https")
        endpoint = f"{protocol}://{account}.blob.{cs.get('EndpointSuffix', DEFAULT_SUFFIX)}"
    if endpoint and not account:
        parsed = urlsplit(endpoint)
        host = parsed.hostname or ""
        account = (
            parsed.path.strip("/").split("/")[0]
            if host in ("127.0.0.1", "localhost")
            else host.split(".")[0]
        ) or None
    return account, endpoint.rstrip("/") if endpoint else None


def resolve_credentials(
    location: AzureLocation | None = None, env: Mapping[str, str] | None = None
) -> Credentials:
    """Pick the credential for `location` from `env` (default: the process environment).

    A connection string is used only when it is for the location's account (or the location
    names none), so a stray emulator connection string never authenticates a real account.
    """
    env = os.environ if env is None else env
    wanted = location.account if location else None
    conn = env.get(CONNECTION_STRING, "").strip()
    if conn:
        cs = parse_connection_string(conn)
        account, endpoint = _connection_endpoint(cs)
        if not (cs.get("AccountKey") or cs.get("SharedAccessSignature")) or not endpoint:
            raise AzureError(
                f"{CONNECTION_STRING} is malformed: it needs AccountName and AccountKey, or "
                "BlobEndpoint and SharedAccessSignature"
            )
        if wanted is None or account is None or account.lower() == wanted.lower():
            return Credentials("connection_string", account or wanted, endpoint, conn)
    account = wanted or env.get(ACCOUNT_NAME, "").strip() or None
    if location is not None and location.endpoint:
        url = location.endpoint
    elif account:
        suffix = location.suffix if location else DEFAULT_SUFFIX
        url = f"https://{account}.blob.{suffix}"
    else:
        url = None
    key = env.get(ACCOUNT_KEY, "").strip()
    sas = env.get(SAS_TOKEN, "").strip().lstrip("?")
    if (key or sas) and not account:
        raise AzureError(
            f"{ACCOUNT_KEY if key else SAS_TOKEN} is set but no account is known: set "
            f"{ACCOUNT_NAME} or use a URI that names the account"
        )
    if key:
        return Credentials("account_key", account, url, account_key=key)
    if sas:
        return Credentials("sas_token", account, url, sas_token=sas)
    if not account:
        raise AzureError(
            f"no storage account: set {ACCOUNT_NAME} (or {CONNECTION_STRING}), or use "
            "abfss://container@account.dfs.core.windows.net/path"
        )
    return Credentials("default", account, url)


# --- keeping secrets out of text -------------------------------------------------------------

# A Java regex for Spark's `spark.redaction.regex`: a setting whose key *or* value matches has
# its value hidden in the UI, event logs and `SparkConf.toDebugString`. Setting it replaces
# Spark's default `(?i)secret|password|token|access[.]key`, so that comes first. `sas` only as a
# word (`fs.azure.sas.<container>...`), not inside one: a path through "kansas" stays visible.
# Only syntax Java and Python read alike; tests check it with `re` and with Spark's own code.
SPARK_REDACTION_REGEX = (
    r"(?i)secret|password|token|access[.]key|account[.]key|accountkey|sharedaccess"
    r"|credential|signature|\bsas\b|sig=|sig%3d"
)

# SAS query parameters are short lower-case names (sv, ss, srt, sp, se, st, spr, sr, skoid...).
_SAS_PARAM = r"[a-z][a-z0-9_-]{0,15}=[^&\s'\"<>;#/?]*"  # no / or ?: stop at a URL's path
# Names of URL parameters and pairs whose value is a secret (OAuth, API keys, Spark Connect,
# S3 and GCS signed URLs); `key` alone too: over-masking a harmless value is the cheap mistake.
_SECRET_PARAM = (
    r"[\w.-]*(?:token|secret|passw(?:or)?d|pwd|api[_-]?key|access[_-]?key|private[_-]?key"
    r"|signature|credential|session[_-]?key)|key|sig|code|auth|authorization|x-amz-[\w-]+"
)
_PATTERNS = [
    # connection-string fields, whatever their value
    re.compile(r"(?i)(AccountKey|SharedAccessSignature|SharedAccessKey)=[^;\s'\"]+"),
    # a whole SAS query (every field, not only the signature): `?sv=...&se=...&sig=...`
    re.compile(rf"(?i)(\??)(?:{_SAS_PARAM}&)*sig=[^&\s'\"<>;#]*(?:&{_SAS_PARAM})*"),
    # a lone signature, plain or percent-encoded (a URL inside a URL)
    re.compile(r"(?i)([?&;]sig=)[^&\s'\";]+"),
    re.compile(r"(?i)(\bsig%3D)[^&\s'\";]+"),
    # `key: value` / `key=value` pairs in reprs, JSON and headers
    re.compile(
        r"(?i)((?<![A-Za-z])['\"]?(?:account_key|sas_token|credential|Authorization)['\"]?"
        r"\s*[:=]\s*)(['\"]?)[^'\"\s,}]{16,}"
    ),
    # Hadoop settings that carry a secret: fs.azure.account.key.<account>..., fs.azure.sas.*,
    # fs.azure.account.oauth2.client.secret..., as `k=v`, `k: v` or a Python/JSON pair
    re.compile(
        r"(?i)(fs\.azure\.[\w.-]*?(?:key|secret|sas|token)[\w.-]*['\"]?\s*[=:]\s*['\"]?)"
        r"[^'\"\s,;}]+"
    ),
    re.compile(r"(?i)(\bBearer\s+)[A-Za-z0-9._~+/=-]{16,}"),
    # a storage account key: 64 random bytes in base64, whatever surrounds it
    re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{86}=="),
    # a URL's `user:password@` (`https://bob:pw@host/w.pth`, `MLFLOW_TRACKING_URI`): the password
    # goes, the user stays. A lone `name@` is not a secret: abfss://container@account...
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@'\"<>]*:)[^/\s@'\"<>]+(?=@)"),
    # a URL parameter with a secret-looking name, `?token=`, `&api_key=`, and Spark Connect's
    # `sc://host:443/;token=...;user_id=...` (`;` separates its parameters)
    re.compile(rf"(?i)([?&;](?:{_SECRET_PARAM})=)[^&;#\s'\"<>]+"),
    # a JSON / repr / header pair whose name says secret, whatever the value's length
    re.compile(rf"(?i)((?<![\w.-])(['\"]?)(?:{_SECRET_PARAM})\2\s*[:=]\s*)(['\"])[^'\"]+\3"),
]


def _env_secrets(env: Mapping[str, str] | None = None) -> list[str]:
    env = os.environ if env is None else env
    found: list[str] = []
    for name in (*SECRET_ENV, *OTHER_SECRET_ENV):
        value = env.get(name, "").strip()
        if not value:
            continue
        found.append(value)
        if name == CONNECTION_STRING:
            cs = parse_connection_string(value)
            found += [cs[k] for k in ("AccountKey", "SharedAccessSignature") if cs.get(k)]
        if name == SAS_TOKEN:
            found.append(value.lstrip("?"))
    return found


def redact(text: object, extra: Iterable[str] = ()) -> str:
    """`text` with every known secret replaced by `***`: the values of the credential
    variables, `extra`, and anything shaped like one: `AccountKey=`, `fs.azure.account.key...=`,
    a SAS query (all of it) or signature, a bearer token, a bare account key.

    Any text may go through it (messages, tracebacks, URLs, reports), so callers outside this
    module (the CLI's error handler, log filters) need nothing else; it never raises.
    """
    try:
        out = str(text)
    except Exception:  # an object whose __str__ fails must not hide the original error
        out = f"<unprintable {type(text).__name__}>"
    secrets = sorted({s for s in [*_env_secrets(), *extra] if s and len(s) >= 8}, key=len)
    for secret in reversed(secrets):  # longest first, so a connection string goes whole
        out = out.replace(secret, REDACTED)
    conn, query, sig, sig_encoded, pair, hadoop, bearer, key, userinfo, param, quoted = _PATTERNS
    out = conn.sub(lambda m: f"{m.group(1)}={REDACTED}", out)
    out = query.sub(lambda m: f"{m.group(1)}{REDACTED}", out)
    out = sig.sub(lambda m: f"{m.group(1)}{REDACTED}", out)
    out = sig_encoded.sub(lambda m: f"{m.group(1)}{REDACTED}", out)
    out = pair.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", out)
    out = hadoop.sub(lambda m: f"{m.group(1)}{REDACTED}", out)
    out = bearer.sub(lambda m: f"{m.group(1)}{REDACTED}", out)
    out = key.sub(REDACTED, out)
    out = userinfo.sub(lambda m: f"{m.group(1)}{REDACTED}", out)
    out = param.sub(lambda m: f"{m.group(1)}{REDACTED}", out)
    return quoted.sub(lambda m: f"{m.group(1)}{m.group(3)}{REDACTED}{m.group(3)}", out)


def redact_traceback(exc: BaseException) -> str:
    """The full traceback of `exc` (chained causes included), redacted: for a top-level error
    handler that wants to show or log a stack without leaking the URL or key in a message."""
    import traceback

    return redact("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


_SECRET_KEY = re.compile(r"(?i)(key|secret|token|sas|password|credential|signature)")


def redact_conf(value: Any) -> Any:
    """A copy of a config mapping (nested) with secret-looking settings masked, e.g. a
    `--conf fs.azure.account.key.<account>...=...` that would otherwise land in report.json."""
    if isinstance(value, Mapping):
        return {
            k: REDACTED
            if isinstance(v, str) and v and _SECRET_KEY.search(str(k))
            else redact_conf(v)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return type(value)(redact_conf(v) for v in value)
    return redact(value) if isinstance(value, str) else value


def _redact_record(record: logging.LogRecord, *, keep_exc_info: bool) -> None:
    """Rewrite `record`'s final text and traceback through `redact`, in place."""
    try:
        message = record.getMessage()
    except Exception:
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None
    if record.exc_info and record.exc_info[1] is not None:
        # Formatters print the cached exc_text; the factory keeps exc_info for handlers
        # that want it, a handler's filter drops it
        record.exc_text = redact_traceback(record.exc_info[1])
        if not keep_exc_info:
            record.exc_info = None


class RedactingFilter(logging.Filter):
    """Rewrites every record's final text through `redact` (messages and tracebacks)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _redact_record(record, keep_exc_info=False)
        return True


_FACTORY_LOCK = threading.Lock()


def _redacting_factory(base: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        _redact_record(record, keep_exc_info=True)
        return record

    make.fruits_redacting = True  # type: ignore[attr-defined]
    return make


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Attach `RedactingFilter` to the handlers of `logger` (default: root) and to the `logger`
    itself, once each, and redact every record as it is made (`logging.setLogRecordFactory`).

    Why the factory too: a handler filter only sees records that reach that handler, and
    libraries add their own handlers later or stop propagation (MLflow logs through its own
    `mlflow` handler, uvicorn through its own); a record made anywhere goes through the factory,
    whichever handler prints it. Only records that pass the level check are made, so a quiet
    DEBUG costs nothing."""
    target = logger or logging.getLogger()
    if not any(isinstance(f, RedactingFilter) for f in target.filters):
        target.addFilter(RedactingFilter())
    for handler in target.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
    with _FACTORY_LOCK:
        current = logging.getLogRecordFactory()
        if not getattr(current, "fruits_redacting", False):
            logging.setLogRecordFactory(_redacting_factory(current))


# --- one-line errors ---------------------------------------------------------------------------


def explain(
    exc: BaseException, location: AzureLocation | None = None, account: str | None = None
) -> str:
    """A one-line, secret-free reason for an Azure failure (missing container, refused
    credential, unreachable endpoint), else the exception's first line."""
    where = f" ({redact(location.uri)})" if location else ""
    name_ = account or (location.account if location else None)
    account = f"account {name_!r}" if name_ else "the storage account"
    text = str(exc)
    code = str(getattr(exc, "error_code", "") or "")
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    if isinstance(exc, AzureError):  # already one line of ours (e.g. no usable credential)
        return redact(f"{text}{where}")
    if code == "ContainerNotFound" or "ContainerNotFound" in text:
        container = location.container if location else "?"
        return f"container {container!r} not found in {account}{where}"
    if code == "BlobNotFound" or isinstance(exc, FileNotFoundError):
        return f"not found{where}"
    if (
        status in (401, 403)
        or code
        in ("AuthenticationFailed", "AuthorizationFailure", "AuthorizationPermissionMismatch")
        or name in ("ClientAuthenticationError", "CredentialUnavailableError")
    ):
        return f"credential refused by {account}{where}: check the key, SAS token or role"
    if name in ("ServiceRequestError", "ClientConnectorError", "ConnectionError") or any(
        s in text for s in ("Failed to establish", "Connection refused", "Name or service not")
    ):
        return f"storage endpoint unreachable{where}: check the account name and network"
    first = text.strip().splitlines()[0] if text.strip() else name
    return redact(f"{first}{where}")
