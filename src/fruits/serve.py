"""HTTP API and web page: a photo in, the fruit's name, confidence and facts out.

`create_app` builds the FastAPI app; the model is loaded once in its lifespan (never at import),
so a test can hand in a ready `Predictor`. Every bad input ends as a 4xx with a JSON body
`{"error": code, "message": text}`: upload limits are enforced by `UploadGuard` before the body is
parsed, decoding failures by the predict route.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from fruits import __version__
from fruits.facts import facts_for
from fruits.images import ImageError
from fruits.serving import Predictor

log = logging.getLogger(__name__)

PREDICT_PATH = "/v1/predict"
MULTIPART_SLACK = 64 * 1024  # multipart boundaries and part headers around the file
ACCEPTED_PART_TYPES = ("image/", "application/octet-stream")


@dataclass(frozen=True)
class ServeSettings:
    """What `fruits serve` configures; tests build their own."""

    run: str = "fruits-output"
    max_bytes: int = 10 * 1024 * 1024
    max_pixels: int = 40_000_000  # capped by the run's own limit
    default_top_k: int = 3
    threads: int = 0  # ONNX Runtime intra-op threads; 0 = every core
    max_batch: int = 1  # >1: concurrent requests share CNN calls (slower on a 2-core CPU)


class ApiError(StarletteHTTPException):
    """Raised anywhere in a request: becomes `status` with a JSON error body. An HTTPException,
    so FastAPI's body parser lets it through when the size guard raises it mid-read."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status_code=status, detail=message)
        self.status, self.code, self.message = status, code, message


class ErrorBody(BaseModel):
    error: str = Field(description="Machine-readable code, e.g. `not_an_image`.")
    message: str = Field(description="What went wrong, for a person.")


class FactsOut(BaseModel):
    name: str
    variety: str | None
    family: str
    season: str
    description: str
    energy_kcal_per_100g: int


class Guess(BaseModel):
    label: str = Field(description="Fruits-360 class, e.g. `Banana 1`.")
    name: str = Field(description="Common name of the fruit, e.g. `Banana`.")
    probability: float
    facts: FactsOut | None


class PredictOut(BaseModel):
    prediction: Guess = Field(description="The best guess.")
    top_k: list[Guess] = Field(description="Best guesses first.")
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


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in {
        400: "Empty upload.",
        413: "Upload over the size limit.",
        415: "Not multipart/form-data, or the part is not an image type.",
        422: "Not an image, corrupt, absurd dimensions, missing field or bad parameter.",
    }.items()
}


def _facts(label: str) -> FactsOut | None:
    f = facts_for(label)
    if f is None:
        return None
    return FactsOut(
        name=f.name, variety=f.variety, family=f.family, season=f.season,
        description=f.description, energy_kcal_per_100g=f.energy_kcal_per_100g,
    )  # fmt: skip


def _name(label: str) -> str:
    f = facts_for(label)
    return f.name if f is not None else label


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status)


class UploadGuard:
    """ASGI middleware on `POST /v1/predict`: refuses a non-multipart request (415) and a body
    over the limit (413) before any of it is parsed or spooled, whether the client announced its
    length or streams it chunked."""

    def __init__(self, app: Any, *, max_body: int) -> None:
        self.app = app
        self.max_body = max_body

    async def __call__(
        self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]], send: Any
    ) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or scope["path"].rstrip("/") != PREDICT_PATH
        ):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        ctype = headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype != "multipart/form-data":
            shown = ctype or "none"
            await _error(415, "unsupported_media_type",
                         f"send the photo as multipart/form-data (field `image`); got {shown}")(
                scope, receive, send)  # fmt: skip
            return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await self._too_large(scope, receive, send)
            return
        received = 0
        started = False

        async def limited() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise ApiError(413, "too_large", self._limit_text())
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
            await _error(exc.status, exc.code, exc.message)(scope, receive, send)

    def _limit_text(self) -> str:
        limit = self.max_body - MULTIPART_SLACK
        mb = f" ({limit / 2**20:g} MB)" if limit >= 2**20 else ""
        return f"upload is over the limit of {limit} bytes{mb}"

    async def _too_large(self, scope: Any, receive: Any, send: Any) -> None:
        await _error(413, "too_large", self._limit_text())(scope, receive, send)


def create_app(settings: ServeSettings, *, predictor: Predictor | None = None) -> FastAPI:
    """The API + page. `predictor`: use this one instead of loading `settings.run`."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = predictor or Predictor.load(settings.run, threads=settings.threads)
        batching = settings.max_batch > 1 and predictor is None  # a lent predictor stays as is
        if batching:
            loaded.start_batching(max_batch=settings.max_batch)
        app.state.predictor = loaded
        log.info("serving run %s (%d classes)", loaded.run_id, len(loaded.classes))
        try:
            yield
        finally:
            if batching:
                loaded.stop_batching()

    app = FastAPI(
        title="Fruits! recognition API",
        version=__version__,
        description="Photograph a fruit, learn what it is. Model: CNN features -> PCA -> "
        "logistic regression, trained by the `fruits run` Spark pipeline.",
        lifespan=lifespan,
    )
    app.add_middleware(UploadGuard, max_body=settings.max_bytes + MULTIPART_SLACK)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

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

    def get_predictor(request: Request) -> Predictor:
        return request.app.state.predictor

    @app.post(PREDICT_PATH, response_model=PredictOut, responses=ERRORS, tags=["predict"])
    def predict(
        request: Request,
        image: Annotated[UploadFile, File(description="A photo: JPEG, PNG, WebP, GIF, BMP...")],
        k: Annotated[int, Query(ge=1, le=20, description="How many guesses to return.")] = (
            settings.default_top_k
        ),
    ) -> PredictOut:
        """Recognise the fruit in a photo: top-k classes with probabilities and facts."""
        started = time.perf_counter()
        part_type = (image.content_type or "").split(";")[0].strip().lower()
        if part_type and not part_type.startswith(ACCEPTED_PART_TYPES):
            raise ApiError(415, "unsupported_media_type",
                           f"the `image` part must be an image, got {part_type}")  # fmt: skip
        data = image.file.read(settings.max_bytes + 1)
        if len(data) > settings.max_bytes:
            raise ApiError(413, "too_large", f"image is over the limit of {settings.max_bytes} "
                           "bytes")  # fmt: skip
        if not data:
            raise ApiError(400, "empty", "the uploaded file is empty (0 bytes)")
        pred = get_predictor(request)
        try:
            result = pred.predict(data, top_k=k, max_pixels=settings.max_pixels)
        except ImageError as exc:
            code = "image_too_large" if exc.reason.startswith("image too large") else "not_an_image"
            raise ApiError(422, code, exc.reason) from None
        except Exception as exc:  # a decoder plugin failing in a way images.py does not map
            log.warning("undecodable upload: %s", exc)
            raise ApiError(422, "not_an_image", f"could not decode the image: {exc}") from None
        guesses = [
            Guess(label=lab, name=_name(lab), probability=p, facts=_facts(lab))
            for lab, p in zip(result.labels, result.probabilities, strict=True)
        ]
        return PredictOut(
            prediction=guesses[0],
            top_k=guesses,
            run_id=pred.run_id,
            elapsed_ms=round((time.perf_counter() - started) * 1000, 2),
        )

    @app.get("/v1/classes", response_model=ClassesOut, tags=["model"])
    def classes(request: Request) -> ClassesOut:
        """Every class the model knows, with its facts."""
        labels = get_predictor(request).classes
        return ClassesOut(
            count=len(labels),
            classes=[ClassOut(label=x, name=_name(x), facts=_facts(x)) for x in labels],
        )

    @app.get("/health", response_model=HealthOut, tags=["model"])
    def health(request: Request) -> HealthOut:
        """Liveness + which run is served."""
        pred = get_predictor(request)
        return HealthOut(
            status="ok",
            run_id=pred.run_id,
            classes=len(pred.classes),
            backbone=(pred.backbone.get("backbone") or {}).get("name"),
            version=__version__,
        )

    web = resources.files("fruits") / "web"

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(web / "index.html"), media_type="text/html")

    app.mount("/static", StaticFiles(directory=str(web)), name="static")
    return app


def serve(settings: ServeSettings, *, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Blocking: run uvicorn with one worker (the model is loaded once, in the lifespan)."""
    import uvicorn

    uvicorn.run(create_app(settings), host=host, port=port, log_level="info")
