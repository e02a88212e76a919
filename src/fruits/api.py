"""HTTP API and web page: a photo in, the fruit's name, confidence and facts out.

`create_app` builds the FastAPI app; the model is loaded once in its lifespan (never at import),
so a test can hand in a ready `Predictor`. Every bad input ends as a 4xx with a JSON body
`{"error": code, "message": text}`: upload limits and body timeouts are enforced by `UploadGuard`
as the body arrives, decoding failures by the predict route.

What one process may spend is bounded: upload bytes held at once (`UploadGuard`), requests
decoding or predicting at once and waiting for that (`AdmissionGate`, 503 beyond), images that
decode to many pixels (a gate and a low-priority thread of their own, so a few of them cannot
starve ordinary photos), memory per decode (`images.decode_image`'s budget), connections with a
request (`max_connections`) and connections still sending their request head (`HeadGuard`:
closed after `head_timeout_s`, and not counted against `max_connections`, so slow-header
clients cannot lock everyone else out).

Privacy: an uploaded photo lives in memory only, for the duration of its request. The multipart
body is parsed here (`ImagePart`) rather than by Starlette, whose parser spools any file part over
1 MB to a temporary file on disk; its bytes and its EXIF (GPS position, camera, dates) are never
logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import threading
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from importlib import resources
from typing import Annotated, Any, Literal, cast

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from fruits import __version__
from fruits.facts import NEGATIVE, FruitFacts, Source, facts_for, human_name
from fruits.images import CROP_SIDE, JPEG_FORMATS, ImageError
from fruits.predictor import BatcherClosed, Prediction, Predictor

log = logging.getLogger(__name__)

PREDICT_PATH = "/v1/predict"
CONTRIBUTIONS_PATH = "/v1/contributions"
UPLOAD_PATHS = (PREDICT_PATH, CONTRIBUTIONS_PATH)  # the routes whose bodies `UploadGuard` bounds
IMAGE_FIELD = "image"
CONTRIBUTION_FIELDS = ("label", "consent", "answer")  # small text parts kept beside the image
MAX_TEXT_FIELD = 1024  # bytes of one such text part; longer ones are cut (and then refused)
MULTIPART_SLACK = 64 * 1024  # multipart boundaries and part headers around the file
ACCEPTED_PART_TYPES = ("image/", "application/octet-stream")
# Confidence in words: the page's heading and bar say the same thing. Known answers at or over
# SURE read "Sure: a mango", over PROBABLY "Probably a mango", under it "Perhaps a mango";
# below the run's threshold, or "not a fruit", "Not sure what this is" with no percentage.
SURE = 0.9
PROBABLY = 0.6
# Sent with every refusal made before the body was read to its end: the rest of that body is
# still on its way, so the connection cannot carry another request (h11 then closes it).
CLOSE = {"Connection": "close"}


def default_decoders() -> int:
    """Requests decoding and predicting at once: one per core, at least 2 (one slow decode must
    not stall every other request), at most 4 (beyond, they only share the cores thinner and
    each holds up to a decode budget of memory)."""
    return min(4, max(2, os.cpu_count() or 2))


@dataclass(frozen=True)
class ServeSettings:
    """What `fruits serve` configures; tests build their own."""

    run: str = "fruits-output"
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000  # capped by the run's own limit
    default_top_k: int = 3
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = every core
    max_batch: int = 1  # >1: concurrent requests share CNN calls (slower on a 2-core CPU)
    max_decoding: int = 0  # requests decoding + predicting at once; 0 = `default_decoders()`
    # Requests waiting for a decoding slot; one more gets 503 + Retry-After. At ~40 ms of CPU a
    # request on 2 cores, 32 waiting is under a second of queue.
    max_waiting: int = 32
    retry_after_s: int = 1
    body_idle_timeout_s: float = 5.0  # a body that stalls this long: 408, connection closed
    body_timeout_s: float = 60.0  # a whole body must arrive within this (slow-drip clients)
    max_buffered_bytes: int = 256 * 1024 * 1024  # upload bytes held by all requests together
    max_connections: int = 128  # connections with a request (or kept alive); beyond: 503
    keep_alive_s: int = 5  # uvicorn `timeout_keep_alive`: idle keep-alive connections
    # A request line + headers must be complete this long after their first byte (or after the
    # connection opened); then the connection is closed. Connections still sending their head do
    # not count against `max_connections`; at most `max_pending_heads` of them are held.
    head_timeout_s: float = 10.0
    max_pending_heads: int = 1024
    # Images decoding to more pixels than this (read from the header; a JPEG after its draft)
    # take the heavy gate instead: `heavy_decoding` at once, in low-priority threads, and
    # `heavy_waiting` more in line. A 12 MP phone JPEG drafts to ~0.2 MP: never heavy.
    heavy_pixels: int = 4_000_000
    heavy_decoding: int = 1
    heavy_waiting: int = 4
    # Contributed photos (`POST /v1/contributions`): the folder they go to; None = off (the
    # endpoints answer 404 `contributions_off`). See `fruits.contributions`.
    contributions: str | None = None
    contribution_agree: int = 3  # independent clients agreeing on a label confirm a photo
    contribution_rate: int = 20  # contributions one client address may send per window
    contribution_window_s: float = 3600.0
    # Every this many seconds the run's `_SUCCESS.json` is looked at; a newly published run is
    # loaded beside the old one and swapped in (no request fails meanwhile). 0 = never.
    reload_s: float = 5.0


class ApiError(StarletteHTTPException):
    """Raised anywhere in a request: becomes `status` with a JSON error body (and `headers`).
    An HTTPException, so it passes through Starlette's body reading untouched."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(status_code=status, detail=message, headers=headers)
        self.status, self.code, self.message = status, code, message


class ErrorBody(BaseModel):
    error: str = Field(description="Machine-readable code, e.g. `not_an_image`.")
    message: str = Field(description="What went wrong, for a person.")


class SourceOut(BaseModel):
    title: str
    url: str = Field(description="A page that states the facts, e.g. the species' encyclopedia "
                     "article.")  # fmt: skip


class FactsOut(BaseModel):
    name: str
    variety: str | None
    family: str
    season: str
    description: str
    energy_kcal_per_100g: int
    origin: str | None = Field(None, description="Where the species comes from.")
    wild_relatives: str | None = Field(None, description="Its wild ancestors or relatives.")
    cultivars: str | None = Field(None, description="How many cultivars are known.")
    pollination: str | None = None
    season_europe: str | None = Field(None, description="When it is in season in Europe.")
    diversity: str | None = Field(
        None, description="A note on its genetic diversity or conservation."
    )
    sources: list[SourceOut] = Field(
        default_factory=list, description="Where this species' facts come from."
    )
    variety_note: str | None = Field(
        None, description="About the variety, where it is a named cultivar."
    )
    variety_sources: list[SourceOut] = Field(default_factory=list)


class Guess(BaseModel):
    label: str = Field(description="Fruits-360 class, e.g. `Banana 1`.")
    name: str = Field(description="Common name of the fruit, e.g. `Banana`.")
    probability: float
    facts: FactsOut | None


class Answer(Guess):
    species: str = Field(
        description="The species answered in everyday words, e.g. `Apple`, `Passion fruit`: "
        "its varieties' probabilities summed. `name` is the same."
    )
    species_probability: float = Field(description="Calibrated probability of `species`.")
    variety: str | None = Field(
        description="The variety in everyday words, e.g. `Lady Finger` (class `Banana Lady "
        "Finger 1`), named when the model is sure enough of its class (then `label`); null "
        "when unnamed or when the class is only the species with an index (`Banana 1`)."
    )


class SpeciesGuess(BaseModel):
    species: str = Field(description="Another species, in everyday words.")
    probability: float = Field(description="Its calibrated probability (its classes summed).")


class PredictOut(BaseModel):
    verdict: Literal["known", "unsure"] = Field(
        description="`known`: the species is answered with confidence; `unsure`: below the "
        "run's calibrated threshold, or not a fruit the model knows."
    )
    confidence: Literal["sure", "probably", "perhaps", "not_sure"] = Field(
        description=f"`verdict` and `species_probability` in words: `sure` (>= {SURE}), "
        f"`probably` (>= {PROBABLY}), `perhaps` (known, lower), `not_sure` (verdict `unsure`)."
    )
    headline: str = Field(
        description="The answer as the web page's heading says it, the name once: "
        "`Sure: a banana`, `Probably a mango`, `Not sure what this is`."
    )
    hint: str | None = Field(
        description="For `not_sure` only: what it might be, without a percentage."
    )
    message: str = Field(description="The whole answer in one sentence, for a person.")
    prediction: Answer = Field(
        description="The answer: `species`, `variety` and `facts` (of that species); `label` "
        "and `probability` are the best class overall."
    )
    others: list[SpeciesGuess] = Field(
        description="Other species with at least 1%, best first (never `not a fruit`)."
    )
    top_k: list[Guess] = Field(description="Best classes first.")
    run_id: str | None
    elapsed_ms: float


class ClassOut(BaseModel):
    label: str
    name: str
    facts: FactsOut | None


class ClassesOut(BaseModel):
    count: int
    classes: list[ClassOut]


class HealthOut(BaseModel):
    status: str
    run_id: str | None
    classes: int
    backbone: str | None
    version: str
    max_upload_bytes: int = Field(
        description="The largest photo accepted; the page checks it before sending."
    )
    contributions: bool = Field(
        default=False,
        description="Whether this server accepts contributed photos (`POST /v1/contributions`).",
    )


class ContributionOut(BaseModel):
    id: str = Field(
        description="The contribution's id (32 hex digits): keep it to delete the photo with "
        "`DELETE /v1/contributions/{id}`. The same photo sent again gets the same id."
    )
    status: Literal["pending", "confirmed"] = Field(
        description="`pending` until reviewed (or until enough people agree on its label); "
        "`confirmed`: it is in the training data of the next `fruits run`."
    )


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Empty upload or broken multipart body.",
        408: "The request head or the upload stalled or took too long; the connection is closed.",
        413: "Upload over the size limit.",
        415: "Not multipart/form-data, or the part is not an image type.",
        422: "Not an image, corrupt, too large to decode, missing field or bad parameter.",
        503: "Busy (too many requests, large images or connections at once) or shutting down. "
        "Retry after the `Retry-After` header's seconds.",
    }.items()
}

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [IMAGE_FIELD],
                    "properties": {
                        IMAGE_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "A photo: JPEG, PNG, WebP, GIF, BMP...",
                        }
                    },
                }
            }
        },
    }
}


def _sources_out(sources: Iterable[Source]) -> list[SourceOut]:
    return [SourceOut(title=x.title, url=x.url) for x in sources]


def _facts_out(f: FruitFacts | None) -> FactsOut | None:
    if f is None:
        return None
    return FactsOut(
        name=f.name,
        variety=f.variety,
        family=f.family,
        season=f.season,
        description=f.description,
        energy_kcal_per_100g=f.energy_kcal_per_100g,
        origin=f.origin,
        wild_relatives=f.wild_relatives,
        cultivars=f.cultivars,
        pollination=f.pollination,
        season_europe=f.season_europe,
        diversity=f.diversity,
        sources=_sources_out(f.sources),
        variety_note=f.variety_note,
        variety_sources=_sources_out(f.variety_sources),
    )


def _facts(label: str) -> FactsOut | None:
    return _facts_out(facts_for(label))


def _name(label: str) -> str:
    """A class's species in everyday words: "Maracuja 1" -> "Passion fruit"."""
    return human_name(label).species


def _a(name: str) -> str:
    """ "a banana", "an apple": the name mid-sentence."""
    lower = name[:1].lower() + name[1:]
    return ("an " if lower[:1] in "aeiou" else "a ") + lower


def confidence_of(verdict: str, probability: float) -> str:
    """The confidence word for an answer: the heading and the bar must mean the same."""
    if verdict != "known":
        return "not_sure"
    if probability >= SURE:
        return "sure"
    return "probably" if probability >= PROBABLY else "perhaps"


def _words(confidence: str, species: str, probability: float) -> tuple[str, str | None, str]:
    """(headline, hint, message): an honest "not sure" rather than a confident wrong name, and
    no percentage beside it."""
    if confidence == "not_sure":
        headline = "Not sure what this is"
        if species == NEGATIVE:
            hint = "It does not look like a fruit or vegetable I know."
        else:
            hint = f"It might be {_a(species)}, but I cannot tell from this photo."
        return headline, hint, f"{headline}. {hint}"
    start = {"sure": "Sure: ", "probably": "Probably ", "perhaps": "Perhaps "}[confidence]
    headline = start + _a(species)
    return headline, None, f"{headline} ({probability:.0%} likely)."


def over_limit_text(max_bytes: int) -> str:
    """The 413 message, one text whether the body or the part is over: the web page refuses a
    photo over the limit before sending it, with these words (app.js `overLimitText`)."""
    mb = f" ({max_bytes / 2**20:g} MB)" if max_bytes >= 2**20 else ""
    return f"upload is over the limit of {max_bytes} bytes{mb}"


def _error(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


class UploadGuard:
    """ASGI middleware on `POST /v1/predict`, applied as the body arrives, before any of it is
    parsed: refuses a non-multipart request (415), a body over the limit (413, whether the
    client announced its length or streams it chunked), a body that stalls for `idle_timeout`
    seconds or is not complete after `timeout` seconds (408), and new upload bytes while all
    requests together already hold `max_buffered` bytes (503). Refusals made mid-body close the
    connection: a stalled client costs a few seconds, not a connection forever."""

    def __init__(
        self,
        app: Any,
        *,
        max_body: int,
        idle_timeout: float = 5.0,
        timeout: float = 60.0,
        max_buffered: int = 256 * 1024 * 1024,
        retry_after_s: int = 1,
    ) -> None:
        self.app = app
        self.max_body = max_body
        self.idle_timeout = idle_timeout
        self.timeout = timeout
        self.max_buffered = max_buffered
        self.retry_after_s = retry_after_s
        self.buffered = 0  # body bytes received by requests still running (one event loop)

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Any
    ) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"].rstrip("/") not in UPLOAD_PATHS
        ):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "multipart/form-data":
            shown = ctype or "none"
            text = f"send the photo as multipart/form-data (field `image`); got {shown}"
            await _error(415, "unsupported_media_type", text)(scope, receive, send)
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await self._too_large(scope, receive, send)
            return
        received = 0
        started = False
        body_done = False
        deadline = asyncio.get_running_loop().time() + self.timeout

        async def limited() -> dict[str, Any]:
            nonlocal received, body_done
            if body_done:  # afterwards the app only listens for a disconnect: no timeout
                return await receive()
            left = deadline - asyncio.get_running_loop().time()
            try:
                message = await asyncio.wait_for(receive(), timeout=min(self.idle_timeout, left))
            except asyncio.TimeoutError:
                raise ApiError(408, "timeout", self._timeout_text(left), headers=CLOSE) from None
            if message["type"] == "http.request":
                size = len(message.get("body", b""))
                received += size
                self.buffered += size
                if received > self.max_body:
                    raise ApiError(413, "too_large", self._limit_text(), headers=CLOSE)
                if self.buffered > self.max_buffered:
                    raise ApiError(
                        503,
                        "busy",
                        "the server is receiving too many uploads; retry "
                        f"in {self.retry_after_s} s",
                        headers={**CLOSE, "Retry-After": str(self.retry_after_s)},
                    )
                body_done = not message.get("more_body", False)
            return message

        async def tracking_send(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking_send)
        except ApiError as exc:  # raised while reading the body, outside the route
            if started:
                raise
            await _error(exc.status, exc.code, exc.message, exc.headers)(scope, receive, send)
        finally:
            self.buffered -= received

    def _timeout_text(self, left: float) -> str:
        if left <= self.idle_timeout:
            return f"the upload did not arrive within {self.timeout:g} s"
        return f"the upload stalled: no data for {self.idle_timeout:g} s"

    def _limit_text(self) -> str:
        return over_limit_text(self.max_body - MULTIPART_SLACK)

    async def _too_large(self, scope: Any, receive: Any, send: Any) -> None:
        await _error(413, "too_large", self._limit_text(), CLOSE)(scope, receive, send)


class AdmissionGate:
    """At most `active` requests decode and predict at once, at most `waiting` more wait for a
    turn; any further request is refused at once with 503 and Retry-After. Decoding is the costly,
    memory-hungry part (up to a decode budget each), so this bounds both CPU contention and
    memory, and an overloaded server answers quickly instead of piling up work. One per app,
    used from its event loop only."""

    def __init__(
        self, *, active: int, waiting: int, retry_after_s: int = 1, what: str = "requests"
    ) -> None:
        self.active = max(1, active)
        self.waiting = max(0, waiting)
        self.retry_after_s = retry_after_s
        self.what = what
        self._slots = asyncio.Semaphore(self.active)
        self._queued = 0

    @property
    def queued(self) -> int:
        """Requests waiting for a turn now."""
        return self._queued

    @asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if self._slots.locked() and self._queued >= self.waiting:
            raise ApiError(
                503,
                "busy",
                f"the server is busy ({self.active} {self.what} running, {self._queued} waiting); "
                f"retry in {self.retry_after_s} s",
                headers={"Retry-After": str(self.retry_after_s)},
            )
        self._queued += 1
        try:
            await self._slots.acquire()
        finally:
            self._queued -= 1
        try:
            yield
        finally:
            self._slots.release()


@dataclass
class Upload:
    """The `image` part of a multipart body, in memory."""

    data: bytes
    content_type: str
    fields: dict[str, str] = field(default_factory=dict)  # the `texts` parts asked for


class ImagePart:
    """Streams a multipart body through python-multipart's parser and keeps the first `image`
    part in memory, and the first of each text part named in `texts` (at most
    `MAX_TEXT_FIELD` bytes each); every other part is dropped as it passes. Nothing is written
    to disk."""

    def __init__(
        self, boundary: bytes, field: str = IMAGE_FIELD, texts: tuple[str, ...] = ()
    ) -> None:
        self.field = field.encode()
        self.texts = {t.encode() for t in texts}
        self.fields: dict[str, bytearray] = {}
        self._text: bytearray | None = None
        self.found = False
        self.complete = False  # the closing boundary was seen
        self.content_type = ""
        self._data = bytearray()
        self._keep = False
        self._headers: dict[bytes, bytes] = {}
        self._name = bytearray()
        self._value = bytearray()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
                "on_end": self._end,
            },
        )

    def write(self, chunk: bytes) -> None:
        self._parser.write(chunk)

    def upload(self) -> Upload | None:
        if not self.found:
            return None
        texts = {k: bytes(v).decode("utf-8", "replace") for k, v in self.fields.items()}
        return Upload(bytes(self._data), self.content_type, texts)

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        self._headers[bytes(self._name).lower()] = bytes(self._value)
        self._name.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition"))
        name = options.get(b"name")
        self._keep = not self.found and name == self.field
        if self._keep:
            self.found = True
            self.content_type = self._headers.get(b"content-type", b"").decode("latin-1")
        self._text = None
        if name in self.texts and name.decode() not in self.fields:
            self._text = self.fields.setdefault(name.decode(), bytearray())

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._keep:
            self._data += data[start:end]
        elif self._text is not None and len(self._text) <= MAX_TEXT_FIELD:
            self._text += data[start : min(end, start + MAX_TEXT_FIELD + 1 - len(self._text))]

    def _part_end(self) -> None:
        self._keep = False
        self._text = None

    def _end(self) -> None:
        self.complete = True


async def read_image_part(request: Request, texts: tuple[str, ...] = ()) -> Upload:
    """The request's `image` part (and the text parts named in `texts`), read into memory as it
    streams in (`UploadGuard` bounds its size and time). 400 for a broken body, 422 when there
    is no `image` part."""
    _, params = parse_options_header(request.headers.get("content-type"))
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "bad_request", "multipart body without a boundary", headers=CLOSE)
    part = ImagePart(boundary, texts=texts)
    try:
        async for chunk in request.stream():
            part.write(chunk)
    except MultipartParseError as exc:
        raise ApiError(400, "bad_request", f"broken multipart body: {exc}", headers=CLOSE) from None
    except ClientDisconnect:
        raise ApiError(400, "bad_request", "the client went away mid-upload") from None
    if not part.complete:
        raise ApiError(400, "bad_request", "the multipart body ends before its closing boundary")
    upload = part.upload()
    if upload is None:
        raise ApiError(422, "invalid_request", f"{IMAGE_FIELD}: Field required")
    return upload


def create_app(settings: ServeSettings, *, predictor: Predictor | None = None) -> FastAPI:
    """The API + page. `predictor`: use this one instead of loading `settings.run`."""
    app = FastAPI(
        title="Fruits! recognition API",
        version=__version__,
        description="Photograph a fruit, learn what it is. Model: CNN features -> PCA -> "
        "logistic regression, trained by the `fruits run` Spark pipeline.",
        lifespan=_lifespan(settings, predictor),
        # FastAPI's /docs and /redoc load Swagger UI / ReDoc from a CDN: blank offline. The
        # package serves its own /docs page (web/docs.html) that reads /openapi.json.
        docs_url=None,
        redoc_url=None,
    )
    app.state.max_bytes = settings.max_bytes
    app.state.contributions = None  # a ContributionStore once the lifespan opens the folder
    app.add_middleware(
        UploadGuard,
        max_body=settings.max_bytes + MULTIPART_SLACK,
        idle_timeout=settings.body_idle_timeout_s,
        timeout=settings.body_timeout_s,
        max_buffered=max(settings.max_buffered_bytes, settings.max_bytes + MULTIPART_SLACK),
        retry_after_s=settings.retry_after_s,
    )
    # Pillow's EXIF/TIFF reader logs every tag it parses at DEBUG (camera, dates, GPS pointer):
    # an upload's metadata must not reach the logs, even when the service is debugged.
    pil_log = logging.getLogger("PIL")
    pil_log.setLevel(max(pil_log.level, logging.INFO))
    _add_error_handlers(app)
    _add_predict_route(app, settings)
    _add_model_routes(app)
    _add_contribution_routes(app, settings)
    _add_page(app)
    return app


def _lifespan(
    settings: ServeSettings, predictor: Predictor | None
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start-up and shut-down: the model is loaded here, once (never at import), with the
    admission gate; a lent `predictor` is used as it is."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = predictor or Predictor.load(settings.run, threads=settings.threads)
        batching = settings.max_batch > 1 and predictor is None  # a lent predictor stays as is
        if batching:
            loaded.start_batching(max_batch=settings.max_batch)
        app.state.predictor = loaded
        app.state.gate = AdmissionGate(
            active=settings.max_decoding or default_decoders(),
            waiting=settings.max_waiting,
            retry_after_s=settings.retry_after_s,
        )
        app.state.heavy_gate = AdmissionGate(
            active=settings.heavy_decoding,
            waiting=settings.heavy_waiting,
            retry_after_s=settings.retry_after_s,
            what="large images",
        )
        app.state.heavy_pool = ThreadPoolExecutor(
            max(1, settings.heavy_decoding), "fruits-heavy", initializer=_lower_priority
        )
        if settings.contributions:
            from fruits.contributions import ContributionStore

            app.state.contributions = ContributionStore(
                settings.contributions, agree=settings.contribution_agree
            )
            app.state.contribution_limit = RateLimit(
                settings.contribution_rate, settings.contribution_window_s
            )
            log.info("contributions go to %s", settings.contributions)
        log.info("serving run %s (%d classes)", loaded.run_id, len(loaded.classes))
        watcher = None
        if predictor is None and settings.reload_s > 0:
            watcher = asyncio.create_task(_watch_run(app, settings, batching))
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            if batching:
                app.state.predictor.stop_batching()
            app.state.heavy_pool.shutdown(wait=False, cancel_futures=True)

    return lifespan


def run_signature(run: str) -> tuple[int, int, int] | None:
    """What identifies a published run: its `_SUCCESS.json` (written last, then the staging
    folder is swapped into place), by inode, size and mtime. None while there is none."""
    from fruits.predictor import SUCCESS_FILE

    try:
        st = os.stat(os.path.join(run, SUCCESS_FILE))
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


async def _watch_run(app: FastAPI, settings: ServeSettings, batching: bool) -> None:
    """Serve a newly published run without downtime: when the run's marker changes, load the
    new run in a worker thread while the old one keeps answering, then swap
    `app.state.predictor` (one assignment: a request holds the predictor it started with). A
    run that fails to load is logged and the old one stays; the next publish is tried again."""
    seen = run_signature(settings.run)
    while True:
        await asyncio.sleep(settings.reload_s)
        now = run_signature(settings.run)
        if now is None or now == seen:
            continue
        seen = now
        try:
            new = await run_in_threadpool(Predictor.load, settings.run, threads=settings.threads)
        except Exception as exc:  # a broken publish must not take the served model down
            log.warning(
                "new run in %s not loaded, still serving the old one: %s", settings.run, exc
            )
            continue
        old = app.state.predictor
        if batching:
            new.start_batching(max_batch=settings.max_batch)
        app.state.predictor = new
        log.info("reloaded: serving run %s (%d classes)", new.run_id, len(new.classes))
        if batching:  # requests that took the old one finish first; then its thread stops
            asyncio.get_running_loop().call_later(
                30, threading.Thread(target=old.stop_batching, daemon=True).start
            )


class RateLimit:
    """At most `per` events per client address in any `window_s` seconds (a sliding window).
    Used from the event loop only. Behind a reverse proxy every client has the proxy's address:
    the limit is then the proxy's, which still bounds what the folder can receive."""

    def __init__(self, per: int, window_s: float) -> None:
        self.per = max(1, per)
        self.window_s = window_s
        self._seen: dict[str, list[float]] = {}

    def allow(self, client: str, now: float | None = None) -> bool:
        """Count one event for `client`; False (and not counted) when it is over the limit."""
        now = time.monotonic() if now is None else now
        cut = now - self.window_s
        if len(self._seen) > 10_000:  # forget clients idle for a whole window
            self._seen = {k: v for k, v in self._seen.items() if v and v[-1] > cut}
        times = [t for t in self._seen.get(client, []) if t > cut]
        if len(times) >= self.per:
            self._seen[client] = times
            return False
        times.append(now)
        self._seen[client] = times
        return True

    def retry_after(self, client: str, now: float | None = None) -> int:
        """Seconds until `client` may send again."""
        now = time.monotonic() if now is None else now
        times = self._seen.get(client) or [now]
        return max(1, int(times[0] + self.window_s - now + 1))


def _lower_priority() -> None:
    """Heavy-image threads run at nice 10 (Linux: per thread), so ordinary requests get the
    cores first while a large image decodes."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not allowed: same priority
        pass


def decoded_pixels(data: bytes, size: int) -> int:
    """Pixels the decoder will produce for `data`, from its header alone (a JPEG after the
    draft `images.decode_image` does, so a phone photo counts as the few it decodes); 0 when
    the header cannot be read: decoding then says why."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
            if img.format in JPEG_FORMATS:
                img.draft("RGB", (size, size))
            width, height = img.size
    except Exception:  # anything Pillow raises on a bad header: the decode answers it
        return 0
    return max(0, width) * max(0, height)


def _add_error_handlers(app: FastAPI) -> None:
    """Every refusal, ours, FastAPI's validation and Starlette's, as `{"error", "message"}`."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
            parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else err.get("msg", ""))
        return _error(422, "invalid_request", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        if exc.status_code == 400:  # FastAPI's "error parsing the body" (broken multipart)
            code = "bad_request"
        return _error(exc.status_code, code, str(exc.detail))


def _get_predictor(request: Request) -> Predictor:
    return cast(Predictor, request.app.state.predictor)  # starlette's app.state is untyped


def _add_predict_route(app: FastAPI, settings: ServeSettings) -> None:
    @app.post(
        PREDICT_PATH,
        response_model=PredictOut,
        responses=ERRORS,
        tags=["predict"],
        openapi_extra=UPLOAD_BODY,
    )
    async def predict(
        request: Request,
        k: Annotated[int, Query(ge=1, le=20, description="How many guesses to return.")] = (
            settings.default_top_k
        ),
    ) -> PredictOut:
        """Recognise the fruit in a photo (multipart field `image`): top-k classes with
        probabilities and facts."""
        started = time.perf_counter()
        upload = _checked_upload(await read_image_part(request), settings.max_bytes)
        pred = _get_predictor(request)
        state = request.app.state
        every = len(pred.classes)  # every class: other species are summed over all of them
        # what `decode_views` decodes to: larger than the input when it cuts crops
        size = round(pred.image_size / CROP_SIDE) if pred.views > 1 else pred.image_size
        if decoded_pixels(upload.data, size) > settings.heavy_pixels:
            async with state.heavy_gate.turn():
                result = await _predict(
                    pred,
                    upload.data,
                    top_k=every,
                    max_pixels=settings.max_pixels,
                    pool=state.heavy_pool,
                )
        else:
            async with state.gate.turn():
                result = await _predict(
                    pred, upload.data, top_k=every, max_pixels=settings.max_pixels
                )
        return _predict_out(result, pred, k, started)


def _checked_upload(upload: Upload, max_bytes: int) -> Upload:
    """The upload, unless its part is not an image type (415), over the limit (413) or empty
    (400)."""
    part_type = upload.content_type.split(";")[0].strip().lower()
    if part_type and not part_type.startswith(ACCEPTED_PART_TYPES):
        raise ApiError(
            415, "unsupported_media_type", f"the `image` part must be an image, got {part_type}"
        )
    if len(upload.data) > max_bytes:
        raise ApiError(413, "too_large", over_limit_text(max_bytes))
    if not upload.data:
        raise ApiError(400, "empty", "the uploaded file is empty (0 bytes)")
    return upload


async def _predict(
    pred: Predictor,
    data: bytes,
    *,
    top_k: int,
    max_pixels: int,
    pool: ThreadPoolExecutor | None = None,
) -> Prediction:
    """`Predictor.predict` in a worker thread (of `pool` when given); an image it cannot decode
    is a 422 whose message is `ImageError.reason` only: the text of any other exception (paths,
    Pillow internals) never reaches the client. A server shutting down answers 503."""
    call = partial(pred.predict, data, top_k=top_k, max_pixels=max_pixels)
    try:
        if pool is None:
            return await run_in_threadpool(call)
        return await asyncio.get_running_loop().run_in_executor(pool, call)
    except ImageError as exc:
        too_large = exc.reason.startswith("image too large")
        code = "image_too_large" if too_large else "not_an_image"
        raise ApiError(422, code, exc.reason) from None
    except BatcherClosed:
        raise ApiError(
            503,
            "shutting_down",
            "the server is shutting down; retry in a moment",
            headers={"Retry-After": "1", **CLOSE},
        ) from None
    except Exception as exc:  # a decoder plugin failing in a way images.py does not map
        log.warning("undecodable upload: %s", type(exc).__name__)
        raise ApiError(422, "not_an_image", "could not decode the image") from None


def _predict_out(result: Prediction, pred: Predictor, k: int, started: float) -> PredictOut:
    """The response body: the answer for a person (species and variety in everyday words, the
    facts of that species, confidence in words), other species, and the best `k` classes."""
    guesses = [
        Guess(label=lab, name=_name(lab), probability=p, facts=_facts(lab))
        for lab, p in zip(result.labels, result.probabilities, strict=True)
    ]
    best = guesses[0]
    raw = result.species or best.name
    said = human_name(raw, result.variety)
    probability = result.species_probability or best.probability
    confidence = confidence_of(result.verdict, probability)
    headline, hint, message = _words(confidence, said.species, probability)
    answer = Answer(
        label=best.label,
        name=said.species,
        probability=best.probability,
        facts=_facts_out(said.facts),
        species=said.species,
        species_probability=probability,
        variety=said.variety,
    )
    return PredictOut(
        verdict=result.verdict,  # type: ignore[arg-type]
        confidence=confidence,  # type: ignore[arg-type]
        headline=headline,
        hint=hint,
        message=message,
        prediction=answer,
        others=_others(result, pred, said.species),
        top_k=guesses[:k],
        run_id=pred.run_id,
        elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
    )


def _others(result: Prediction, pred: Predictor, answered: str) -> list[SpeciesGuess]:
    """Species other than the answer, their classes' probabilities summed (names as a person
    says them, so two spellings of one fruit are one guess); "not a fruit" is no guess."""
    table = pred.calibration.species or {}
    summed: dict[str, float] = {}
    for label, p in zip(result.labels, result.probabilities, strict=True):
        raw = table.get(label, label)
        if raw == NEGATIVE or label == NEGATIVE:
            continue
        name = human_name(raw).species
        summed[name] = summed.get(name, 0.0) + p
    summed.pop(answered, None)
    ranked = sorted(summed.items(), key=lambda kv: -kv[1])
    return [SpeciesGuess(species=n, probability=p) for n, p in ranked if p >= 0.01][:5]


def _add_model_routes(app: FastAPI) -> None:
    @app.get("/v1/classes", response_model=ClassesOut, tags=["model"])
    def classes(request: Request) -> ClassesOut:
        """Every class the model knows, with its facts."""
        labels = _get_predictor(request).classes
        return ClassesOut(
            count=len(labels),
            classes=[ClassOut(label=x, name=_name(x), facts=_facts(x)) for x in labels],
        )

    @app.get("/health", response_model=HealthOut, tags=["model"])
    def health(request: Request) -> HealthOut:
        """Liveness + which run is served."""
        pred = _get_predictor(request)
        return HealthOut(
            status="ok",
            run_id=pred.run_id,
            classes=len(pred.classes),
            backbone=(pred.backbone.get("backbone") or {}).get("name"),
            version=__version__,
            max_upload_bytes=request.app.state.max_bytes,
            contributions=request.app.state.contributions is not None,
        )


CONTRIBUTION_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [IMAGE_FIELD, "label", "consent"],
                    "properties": {
                        IMAGE_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": "The photo that was answered.",
                        },
                        "label": {
                            "type": "string",
                            "description": "What it really is: a class of `GET /v1/classes` "
                            "(e.g. `Banana 1`).",
                        },
                        "consent": {
                            "type": "string",
                            "enum": ["true"],
                            "description": "Must be `true`: the giver agrees that the photo "
                            "(without its metadata) is kept to train the model.",
                        },
                        "answer": {
                            "type": "string",
                            "description": "Optional: the class the model answered.",
                        },
                    },
                }
            }
        },
    }
}

CONTRIBUTION_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    400: {"model": ErrorBody, "description": "Malformed id, empty upload or broken body."},
    403: {"model": ErrorBody, "description": "No consent: `consent` must be `true`."},
    404: {"model": ErrorBody, "description": "Unknown id, or contributions are off here."},
    422: {"model": ErrorBody, "description": "Not an image, or a label the model does not know."},
    429: {"model": ErrorBody, "description": "Too many contributions from this client."},
}


def _store(request: Request) -> Any:
    """The server's `ContributionStore`; 404 when `fruits serve` was started without one."""
    store = request.app.state.contributions
    if store is None:
        raise ApiError(
            404,
            "contributions_off",
            "contributions are off on this server (start it with `fruits serve --contributions "
            "DIR` to accept photos)",
        )
    return store


def _add_contribution_routes(app: FastAPI, settings: ServeSettings) -> None:
    """`POST /v1/contributions` (a consented, labelled photo) and `DELETE` of one by its id."""
    from fruits.contributions import STORE_SIDE, ContributionError, content_hash, reencode

    @app.post(
        CONTRIBUTIONS_PATH,
        status_code=201,
        response_model=ContributionOut,
        responses={**CONTRIBUTION_ERRORS, 200: {"description": "The same photo, given before."}},
        tags=["contributions"],
        openapi_extra=CONTRIBUTION_BODY,
    )
    async def contribute(request: Request) -> JSONResponse:
        """Give a photo and its true label to improve the model; only with `consent=true`. It
        is stored re-encoded, without EXIF or GPS, until reviewed. 201 with its `id` (200 when
        the same photo was given before: same id, stored once)."""
        store = _store(request)
        client = request.client.host if request.client else "unknown"
        limit: RateLimit = request.app.state.contribution_limit
        if not limit.allow(client):
            raise ApiError(
                429,
                "too_many",
                f"too many contributions from this client (at most {limit.per} per "
                f"{limit.window_s:g} s); thank you, and try again later",
                headers={"Retry-After": str(limit.retry_after(client))},
            )
        upload = await read_image_part(request, CONTRIBUTION_FIELDS)
        if upload.fields.get("consent", "").strip().lower() != "true":
            raise ApiError(
                403,
                "consent_required",
                "the photo is kept only with consent: send `consent=true` (nothing was stored)",
            )
        label = upload.fields.get("label", "").strip()
        pred = _get_predictor(request)
        if not label or label == NEGATIVE or label not in pred.classes:
            shown = repr(label[:40]) if label else "empty"
            raise ApiError(
                422,
                "unknown_label",
                f"label {shown} is not a class of this model (GET /v1/classes lists them)",
            )
        answer = upload.fields.get("answer", "").strip()[:200] or None
        upload = _checked_upload(upload, settings.max_bytes)
        state = request.app.state
        heavy = decoded_pixels(upload.data, STORE_SIDE) > settings.heavy_pixels
        call = partial(reencode, upload.data, max_pixels=settings.max_pixels)
        async with (state.heavy_gate if heavy else state.gate).turn():
            try:
                if heavy:  # as predict: its own gate and a low-priority thread
                    photo = await asyncio.get_running_loop().run_in_executor(state.heavy_pool, call)
                else:
                    photo = await run_in_threadpool(call)
            except ImageError as exc:
                code = "image_too_large" if exc.reason.startswith("image too large") else None
                raise ApiError(422, code or "not_an_image", exc.reason) from None
            except Exception as exc:  # a decoder failing in a way images.py does not map
                log.warning("undecodable contribution: %s", type(exc).__name__)
                raise ApiError(422, "not_an_image", "could not decode the image") from None
        try:
            added = await run_in_threadpool(
                store.add, photo, content_hash(upload.data), label, client=client, answer=answer
            )
        except ContributionError as exc:
            raise ApiError(422, "unknown_label", str(exc)) from None
        body = ContributionOut(id=added.id, status=added.status)
        return JSONResponse(body.model_dump(), status_code=201 if added.created else 200)

    @app.delete(
        CONTRIBUTIONS_PATH + "/{contribution_id}",
        status_code=204,
        responses=CONTRIBUTION_ERRORS,
        tags=["contributions"],
    )
    async def withdraw(request: Request, contribution_id: str) -> Response:
        """Delete a contributed photo and everything stored with it (pending or confirmed)."""
        store = _store(request)
        try:
            gone = await run_in_threadpool(store.delete, contribution_id)
        except ContributionError as exc:
            raise ApiError(400, "bad_id", str(exc)) from None
        if not gone:
            raise ApiError(404, "not_found", "no contribution with this id (deleted already?)")
        return Response(status_code=204)


def _add_page(app: FastAPI) -> None:
    """The web page at /, its static files, the API docs page, the PWA manifest and favicon:
    all from the package, nothing from another site, so the page works with no internet."""
    web = resources.files("fruits") / "web"

    def page(name: str, media_type: str) -> Callable[[], FileResponse]:
        def serve_file() -> FileResponse:
            return FileResponse(str(web / name), media_type=media_type)

        return serve_file

    app.get("/", include_in_schema=False)(page("index.html", "text/html"))
    app.get("/docs", include_in_schema=False)(page("docs.html", "text/html"))
    app.get("/manifest.webmanifest", include_in_schema=False)(
        page("manifest.webmanifest", "application/manifest+json")
    )
    app.get("/favicon.ico", include_in_schema=False)(page("icon-32.png", "image/png"))
    app.mount("/static", StaticFiles(directory=str(web)), name="static")


def head_guard(settings: ServeSettings) -> type[Any]:
    """uvicorn's h11 protocol with `HeadGuard` (see there), configured by `settings`."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadGuard(H11Protocol):
        """uvicorn's h11 server has no timeout while a request line and headers arrive, and
        its `limit_concurrency` counts every open connection: 130 clients sending a header
        byte every 2 s held all 128 slots and every other request got 503. Here a head must be
        complete `head_timeout_s` after its first byte (or after the connection opened): a
        slower one gets 408 and is closed. Such connections do not count against
        `max_connections`, which counts connections with a request or kept alive after one;
        at most `max_pending_heads` of them are held, one more is closed at once."""

        head_timeout = settings.head_timeout_s
        max_active = settings.max_connections
        max_pending = settings.max_pending_heads
        retry_after = settings.retry_after_s

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.limit_concurrency = None  # counted in `_capped`, without pending heads
            self.awaiting_head = True
            self._head_timer: asyncio.TimerHandle | None = None
            self.app = partial(HeadGuard._capped, self, self.app)

        async def _capped(self, app: Any, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                active = sum(1 for c in self.connections if not getattr(c, "awaiting_head", 0))
                if active > self.max_active or len(self.tasks) > self.max_active:
                    text = f"too many connections; retry in {self.retry_after} s"
                    headers = {**CLOSE, "Retry-After": str(self.retry_after)}
                    await _error(503, "busy", text, headers)(scope, receive, send)
                    return
            await app(scope, receive, send)

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            pending = sum(1 for c in self.connections if getattr(c, "awaiting_head", 0))
            if pending > self.max_pending:
                transport.abort()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.transport.is_closing():
                return
            if self.conn.their_state is h11.IDLE:  # a head has begun and is not complete
                self.awaiting_head = True
                self._arm()
            else:
                self.awaiting_head = False
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self.head_timeout, self._head_late)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if not self.awaiting_head or self.transport.is_closing():
                return
            body = json.dumps(
                {
                    "error": "timeout",
                    "message": f"the request head did not arrive within {self.head_timeout:g} s",
                }
            ).encode()
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                + body
            )
            self.transport.close()

    return HeadGuard


def serve(settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Blocking: run uvicorn (h11, with `head_guard`) with one worker (the model is loaded
    once, in the lifespan). Exposed to the internet, still put a reverse proxy in front: one
    client may open many connections."""
    import uvicorn

    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        http=head_guard(settings),
        log_level="info",
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=10,
    )
