"""The HTTP API with FastAPI's TestClient on a real run: happy path, every bad input, and a
schema-driven fuzz that must never see a 5xx."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fruits.serve import ServeSettings, create_app
from fruits.serving import Predictor

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def run_dir(sample_run) -> Path:
    return Path(sample_run.output)


@pytest.fixture(scope="module")
def client(run_dir):
    app = create_app(ServeSettings(run=str(run_dir)))
    assert not hasattr(app.state, "predictor")  # loaded in the lifespan, not when built
    with TestClient(app) as c:
        assert isinstance(app.state.predictor, Predictor)
        yield c


@pytest.fixture(scope="module")
def small_limit_client(client):
    """Same model, a 2000-byte upload limit, to test the limit without big bodies."""
    app = create_app(ServeSettings(max_bytes=2000), predictor=client.app.state.predictor)
    with TestClient(app) as c:
        yield c


@pytest.fixture(scope="module")
def banana(sample_dir) -> bytes:
    return sorted((sample_dir / "Test" / "Banana 1").glob("*.jpg"))[0].read_bytes()


def _post(client, data: bytes, *, name="photo.jpg", ctype="image/jpeg", field="image", **kw):
    return client.post("/v1/predict", files={field: (name, data, ctype)}, **kw)


def _assert_error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert set(body) == {"error", "message"} and body["message"]
    if code:
        assert body["error"] == code
    return body


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` pixels in a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


# -- happy path ----------------------------------------------------------------------------------


def test_banana_photo_is_a_banana_with_its_facts(client, banana):
    resp = _post(client, banana)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    top = body["prediction"]
    assert top["name"] == "Banana"
    assert top["label"] == "Banana 1"
    assert top["probability"] > 0.5
    facts = top["facts"]
    assert facts["family"] == "Musaceae"
    assert facts["energy_kcal_per_100g"] == 89
    assert facts["description"] and facts["season"]
    assert len(body["top_k"]) == 3 and body["top_k"][0] == top
    probs = [g["probability"] for g in body["top_k"]]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-9
    assert body["run_id"] == client.app.state.predictor.run_id


def test_k_and_other_formats(client, banana):
    img = Image.open(io.BytesIO(banana))
    for data, ctype in ((encode(img, "PNG"), "image/png"), (encode(img, "WEBP"), "image/webp"),
                        (banana, "application/octet-stream"), (banana, "")):  # fmt: skip
        resp = client.post("/v1/predict?k=5", files={"image": ("b", data, ctype)} if ctype
                           else {"image": ("b.jpg", data)})  # fmt: skip
        assert resp.status_code == 200, resp.text
        assert resp.json()["prediction"]["name"] == "Banana"
        assert len(resp.json()["top_k"]) == 5
    assert len(_post(client, banana, params={"k": 20}).json()["top_k"]) == 10  # only 10 classes


def test_tiny_and_thin_images_are_answered(client):
    for size in ((1, 1), (1, 3000), (3000, 2)):
        resp = _post(
            client, encode(Image.new("RGB", size, (250, 220, 40)), "PNG"), ctype="image/png"
        )
        assert resp.status_code == 200, (size, resp.text)


def test_classes_health_page_and_docs(client):
    classes = client.get("/v1/classes").json()
    assert classes["count"] == 10 == len(classes["classes"])
    assert all(c["facts"] is not None for c in classes["classes"])
    assert {"label": "Banana 1", "name": "Banana"}.items() <= next(
        c for c in classes["classes"] if c["label"] == "Banana 1"
    ).items()
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["classes"] == 10
    assert health["backbone"] == "efficientnet_lite0"
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'accept="image/*"' in page.text and 'capture="environment"' in page.text
    assert 'name="viewport"' in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/v1/predict", "/v1/classes", "/health"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


# -- bad input -----------------------------------------------------------------------------------


def test_not_an_image(client):
    _assert_error(_post(client, b"hello, I am text pretending to be a JPEG"), 422, "not_an_image")
    _assert_error(_post(client, b"%PDF-1.4\n" + b"0" * 500, name="doc.pdf"), 422, "not_an_image")


def test_corrupt_and_truncated_images(client, banana):
    _assert_error(_post(client, banana[: len(banana) // 2]), 422, "not_an_image")
    _assert_error(_post(client, banana[:20]), 422, "not_an_image")
    broken = bytearray(banana)
    broken[200:1200] = b"\x00" * 1000
    resp = _post(client, bytes(broken))
    assert resp.status_code in (200, 422)  # a damaged scan may still decode; never a 5xx
    _assert_error(_post(client, png_header(64, 64)[:40], ctype="image/png"), 422, "not_an_image")


def test_empty_upload(client):
    _assert_error(_post(client, b""), 400, "empty")


def test_absurd_dimensions(client):
    body = _assert_error(_post(client, png_header(100_000, 100_000), ctype="image/png"), 422)
    assert body["error"] == "image_too_large" and "100000x100000" in body["message"]
    _assert_error(_post(client, png_header(0x7FFFFFFF, 1), ctype="image/png"), 422)


def test_over_the_size_limit(small_limit_client, client, banana):
    assert len(banana) > 2000
    body = _assert_error(_post(small_limit_client, banana), 413, "too_large")
    assert "2000" in body["message"]

    body = (
        b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="b.jpg"\r\n'
        b"Content-Type: image/jpeg\r\n\r\n" + banana + b"\r\n--xyz--\r\n"
    )

    def chunks():  # no Content-Length: the guard counts while the parser reads
        for i in range(0, len(body), 500):
            yield body[i : i + 500]

    resp = small_limit_client.post(
        "/v1/predict", content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )  # fmt: skip
    assert "content-length" not in resp.request.headers
    _assert_error(resp, 413, "too_large")
    ok = encode(Image.new("RGB", (8, 8), (250, 220, 40)), "PNG")
    assert len(ok) < 2000 and _post(small_limit_client, ok).status_code == 200
    # the default limit is 10 MB: one byte more is refused before the model runs
    _assert_error(_post(client, b"\xff" * (10 * 1024 * 1024 + 1)), 413, "too_large")


def test_wrong_content_types(client, banana):
    _assert_error(
        client.post("/v1/predict", json={"image": "banana"}), 415, "unsupported_media_type"
    )
    _assert_error(
        client.post("/v1/predict", content=banana, headers={"content-type": "image/jpeg"}), 415
    )
    _assert_error(client.post("/v1/predict", content=banana), 415)
    _assert_error(_post(client, banana, ctype="text/plain"), 415, "unsupported_media_type")
    _assert_error(
        client.post(
            "/v1/predict",
            data={"k": "3"},
            headers={"content-type": "application/x-www-form-urlencoded"},
        ),
        415,
    )


def test_missing_or_misnamed_field_and_bad_parameters(client, banana):
    _assert_error(_post(client, banana, field="photo"), 422, "invalid_request")
    _assert_error(client.post("/v1/predict", files={"image": (None, "just text")}), 422)
    for k in ("0", "21", "-1", "three", "1e9"):
        _assert_error(_post(client, banana, params={"k": k}), 422, "invalid_request")


def test_broken_multipart_bodies(client):
    for body, ctype in (
        (b"garbage", "multipart/form-data"),  # no boundary
        (b"garbage", "multipart/form-data; boundary=abc"),
        (
            b'--abc\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\nxx',
            "multipart/form-data; boundary=abc",
        ),
    ):
        resp = client.post("/v1/predict", content=body, headers={"content-type": ctype})
        assert 400 <= resp.status_code < 500, (body, resp.status_code, resp.text)
        assert "error" in resp.json()


def test_unknown_routes_and_methods_are_json_4xx(client):
    _assert_error(client.get("/v2/nothing"), 404, "not_found")
    _assert_error(client.get("/v1/predict"), 405, "method_not_allowed")
    _assert_error(client.delete("/health"), 405)


# -- fuzz ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzz_from_the_openapi_schema_finds_no_5xx(client, mode):
    """Schemathesis generates requests (valid, then schema-violating) for every operation."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.generation import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    strategy = schema.as_strategy(generation_mode=GenerationMode(mode))
    seen: set[int] = set()

    @given(case=strategy)
    @settings(max_examples=60, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def fuzz(case):
        response = case.call()
        seen.add(response.status_code)
        case.validate_response(response, checks=[not_a_server_error])

    fuzz()
    assert seen and max(seen) < 500
