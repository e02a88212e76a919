"""The feedback loop (issue 22, item 5): a consented photo and its true label go to a local
folder without their metadata, can be deleted by id, are confirmed by review or by agreement,
and a confirmed folder is a labelled source for `fruits run --input`.

The API tests use `answer_stub`'s predictor (no model, no Spark): what is checked here is the
contribution path, not recognition. The round trip through a real `fruits run` is marked slow.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from answer_stub import AnswerStub
from fastapi.testclient import TestClient
from PIL import ExifTags, Image
from typer.testing import CliRunner

from fruits.api import ServeSettings, create_app
from fruits.cli import app as cli_app
from fruits.contributions import ContributionError, ContributionStore, reencode, valid_id

SECRETS = ("SECRET-CAM-42", "PRIVATE-DATUM-7Q", "Jane Doe")
LABEL = "Mango 1"  # a class of answer_stub's model


def gps_jpeg(width: int = 400, height: int = 300, seed: int = 0) -> bytes:
    """A phone-like JPEG: camera, owner and GPS in its EXIF, stored sideways (Orientation 6)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    pixels[: height // 4, : width // 4] = (255, 0, 0)  # a red corner shows which way is up
    exif = Image.Exif()
    exif[ExifTags.Base.Model] = SECRETS[0]
    exif[ExifTags.Base.Artist] = SECRETS[2]
    exif[ExifTags.Base.Orientation] = 6
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (48.0, 51.0, 29.1234)
    gps[ExifTags.GPS.GPSMapDatum] = SECRETS[1]
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=92, exif=exif.tobytes())
    return buf.getvalue()


def contribute(client, data: bytes, label: str = LABEL, consent: str | None = "true", **extra):
    form = {"label": label, **extra}
    if consent is not None:
        form["consent"] = consent
    return client.post(
        "/v1/contributions", files={"image": ("photo.jpg", data, "image/jpeg")}, data=form
    )


def make_client(folder: Path | None, host: str = "testclient", **settings) -> TestClient:
    cfg = ServeSettings(contributions=str(folder) if folder else None, reload_s=0, **settings)
    return TestClient(create_app(cfg, predictor=AnswerStub()), client=(host, 50000))


def stored_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))


@pytest.fixture
def folder(tmp_path) -> Path:
    return tmp_path / "contributions"


@pytest.fixture
def client(folder):
    with make_client(folder) as c:
        yield c


def test_a_consented_photo_is_stored_upright_without_its_metadata(client, folder):
    photo = gps_jpeg()
    assert all(s.encode() in photo for s in SECRETS[:2])  # the upload does carry them
    resp = contribute(client, photo, answer="Banana Lady Finger 1")
    assert resp.status_code == 201, resp.text
    cid = resp.json()["id"]
    assert valid_id(cid) and resp.json()["status"] == "pending"
    jpg, sidecar = folder / "pending" / f"{cid}.jpg", folder / "pending" / f"{cid}.json"
    assert stored_files(folder) == sorted([jpg, sidecar])
    stored = jpg.read_bytes()
    for secret in SECRETS:
        assert secret.encode() not in stored
    assert b"Exif" not in stored and b"ICC_PROFILE" not in stored
    img = Image.open(io.BytesIO(stored))
    assert img.format == "JPEG" and not img.getexif() and "exif" not in img.info
    # Orientation 6 was applied before the tag went: the photo is upright, red corner top-right
    assert img.size == (300, 400)
    assert np.asarray(img.convert("RGB"))[10, 290, 0] > 200
    record = json.loads(sidecar.read_text())
    assert record["label"] == LABEL and record["answer"] == "Banana Lady Finger 1"
    assert record["sha256"] == hashlib.sha256(photo).hexdigest()
    assert record["time"] and record["status"] == "pending"
    assert "testclient" not in sidecar.read_text()  # the client's address is never written


def test_a_large_photo_is_kept_small(folder):
    store_side = 1024
    buf = io.BytesIO()
    Image.new("RGB", (3000, 2000), (200, 100, 50)).save(buf, "PNG")
    out = Image.open(io.BytesIO(reencode(buf.getvalue(), max_pixels=40_000_000)))
    assert max(out.size) == store_side and out.size[0] > out.size[1]


@pytest.mark.parametrize("consent", [None, "", "false", "no", "0"])
def test_without_consent_nothing_is_stored(client, folder, consent):
    resp = contribute(client, gps_jpeg(), consent=consent)
    assert resp.status_code == 403, resp.text
    assert resp.json()["error"] == "consent_required"
    assert stored_files(folder) == []


@pytest.mark.parametrize(
    ("label", "data", "status", "error"),
    [
        ("", None, 422, "unknown_label"),
        ("Durian 9", None, 422, "unknown_label"),
        ("not a fruit", None, 422, "unknown_label"),
        ("../../etc", None, 422, "unknown_label"),
        (LABEL, b"this is not a photo", 422, "not_an_image"),
        (LABEL, b"", 400, "empty"),
    ],
)
def test_bad_contributions_are_refused_and_nothing_is_stored(
    client, folder, label, data, status, error
):
    resp = contribute(client, gps_jpeg() if data is None else data, label=label)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == error
    assert stored_files(folder) == []


def test_the_upload_limit_applies(folder):
    with make_client(folder, max_bytes=2000) as c:
        resp = contribute(c, gps_jpeg())
    assert resp.status_code == 413 and resp.json()["error"] == "too_large"
    assert stored_files(folder) == []


def test_the_same_photo_twice_is_one_contribution(client, folder):
    photo = gps_jpeg()
    first = contribute(client, photo)
    again = contribute(client, photo)
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert len(list(folder.rglob("*.jpg"))) == 1
    record = json.loads(next(folder.rglob("*.json")).read_text())
    assert len(record["votes"]) == 1  # the same client again is not a second opinion
    other = contribute(client, gps_jpeg(seed=1))
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]


def test_independent_clients_agreeing_confirm_a_photo(folder):
    photo = gps_jpeg()
    answers = []
    for host, label in [("10.0.0.1", LABEL), ("10.0.0.2", "Maracuja 1"), ("10.0.0.3", LABEL)]:
        with make_client(folder, host=host, contribution_agree=3) as c:
            answers.append(contribute(c, photo, label=label).json())
    assert {a["id"] for a in answers} == {answers[0]["id"]}
    assert [a["status"] for a in answers] == ["pending"] * 3  # 2 of 3 agree: not yet
    with make_client(folder, host="10.0.0.4", contribution_agree=3) as c:
        last = contribute(c, photo)
    assert last.status_code == 200 and last.json()["status"] == "confirmed"
    cid = last.json()["id"]
    assert stored_files(folder) == [
        folder / "confirmed" / "Training" / LABEL / f"{cid}.jpg",
        folder / "confirmed" / "Training" / LABEL / f"{cid}.json",
    ]
    record = json.loads((folder / "confirmed" / "Training" / LABEL / f"{cid}.json").read_text())
    assert record["by"] == "agreement" and len(record["votes"]) == 4


def test_a_contribution_can_be_deleted_by_its_id(client, folder):
    cid = contribute(client, gps_jpeg()).json()["id"]
    assert client.delete(f"/v1/contributions/{cid}").status_code == 204
    assert stored_files(folder) == []
    gone = client.delete(f"/v1/contributions/{cid}")
    assert gone.status_code == 404 and gone.json()["error"] == "not_found"
    # a confirmed one too
    cid = contribute(client, gps_jpeg(seed=2)).json()["id"]
    ContributionStore(folder).accept(cid)
    assert client.delete(f"/v1/contributions/{cid}").status_code == 204
    assert list(folder.rglob("*.jpg")) == []


@pytest.mark.parametrize(
    "bad", ["x", "..", "%2E%2E", "..%2F..%2Fetc%2Fpasswd", "A" * 32, "0" * 31 + "g", "0" * 33]
)
def test_a_malformed_id_never_becomes_a_path(client, folder, bad):
    (folder / "pending" / "keep.json").write_text("{}")
    resp = client.delete(f"/v1/contributions/{bad}")
    assert resp.status_code in (400, 404), resp.text
    if resp.status_code == 400:
        assert resp.json()["error"] == "bad_id"
    assert (folder / "pending" / "keep.json").exists()
    with pytest.raises(ContributionError):
        ContributionStore(folder).delete(bad.replace("%2F", "/").replace("%2E", "."))


def test_one_client_is_rate_limited(folder):
    with make_client(folder, contribution_rate=2) as c:
        assert contribute(c, gps_jpeg(seed=1)).status_code == 201
        assert contribute(c, gps_jpeg(seed=2)).status_code == 201
        refused = contribute(c, gps_jpeg(seed=3))
        assert refused.status_code == 429 and refused.json()["error"] == "too_many"
        assert int(refused.headers["Retry-After"]) >= 1
        other = TestClient(c.app, client=("10.0.0.9", 50000))  # same server, no new lifespan
        assert contribute(other, gps_jpeg(seed=3)).status_code == 201
    assert len(list(folder.rglob("*.jpg"))) == 3


def test_contributions_off_says_so(client):
    with make_client(None) as off:
        for resp in (contribute(off, gps_jpeg()), off.delete("/v1/contributions/" + "0" * 32)):
            assert resp.status_code == 404
            assert resp.json()["error"] == "contributions_off"
            assert "--contributions" in resp.json()["message"]
        assert off.get("/health").json()["contributions"] is False
    assert client.get("/health").json()["contributions"] is True


def test_review_lists_accepts_and_rejects(client, folder):
    ids = [contribute(client, gps_jpeg(seed=s)).json()["id"] for s in range(4)]
    runner = CliRunner()

    def review(*args: str):
        return runner.invoke(cli_app, ["contributions", "review", str(folder), *args])

    listed = review()
    assert listed.exit_code == 0, listed.output
    assert all(cid in listed.output for cid in ids) and "4 pending" in listed.output
    assert review("--accept", ids[0]).exit_code == 0
    assert (folder / "confirmed" / "Training" / LABEL / f"{ids[0]}.jpg").exists()
    relabelled = review("--accept", ids[1], "--label", "Maracuja 1")
    assert relabelled.exit_code == 0, relabelled.output
    assert (folder / "confirmed" / "Training" / "Maracuja 1" / f"{ids[1]}.jpg").exists()
    assert review("--reject", ids[2]).exit_code == 0
    assert not list(folder.rglob(f"{ids[2]}.*"))
    assert review("--accept-all").exit_code == 0
    assert (folder / "confirmed" / "Training" / LABEL / f"{ids[3]}.jpg").exists()
    assert "0 pending" in review().output
    for bad in (["--accept", ids[2]], ["--reject", "../x"], ["--label", "x"]):
        failed = review(*bad)
        assert failed.exit_code == 2 and "error" in failed.output
    missing = runner.invoke(cli_app, ["contributions", "review", str(folder / "nope")])
    assert missing.exit_code == 2


def test_a_newly_published_run_is_picked_up_without_a_restart(tmp_path, monkeypatch):
    """The served run's `_SUCCESS.json` changes (a new run was published there): the server
    loads the new run beside the old and swaps it in; a run that fails to load changes
    nothing."""
    import fruits.api

    run = tmp_path / "run"
    run.mkdir()
    (run / "_SUCCESS.json").write_text('{"n": 1}')
    loaded: list[AnswerStub] = []
    fail = {"now": False}

    def load(path, *, threads=0):
        if fail["now"]:
            raise RuntimeError("half a run")
        loaded.append(AnswerStub())
        return loaded[-1]

    monkeypatch.setattr(fruits.api.Predictor, "load", staticmethod(load))
    app = create_app(ServeSettings(run=str(run), reload_s=0.05))

    def wait_for(cond) -> None:
        deadline = time.monotonic() + 10
        while not cond() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cond()

    with TestClient(app) as c:
        assert app.state.predictor is loaded[0]
        (run / "_SUCCESS.json").write_text('{"n": 2, "newer": true}')
        wait_for(lambda: app.state.predictor is not loaded[0])
        assert app.state.predictor is loaded[1]
        assert c.get("/health").status_code == 200
        fail["now"] = True
        (run / "_SUCCESS.json").write_text('{"n": 3, "broken": "yes"}')
        time.sleep(0.5)
        assert app.state.predictor is loaded[1] and len(loaded) == 2
        assert c.get("/health").status_code == 200


@pytest.fixture
def page_server(folder):
    """The real app (uvicorn, this process, a loopback port) with `answer_stub`'s answers and
    contributions on."""
    import socket
    import threading

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(ServeSettings(contributions=str(folder), reload_s=0), predictor=AnswerStub())
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=20)


@pytest.mark.browser
def test_the_page_asks_and_sends_only_with_consent(page_server, folder, tmp_path):
    """In headless Chromium: after an answer the page asks "Was this right?"; nothing can be
    sent before the consent box is ticked; "yes" sends the answered class, "it is a ..." a
    class from the list; the code shown deletes the photo again."""
    import shutil

    from answer_stub import CASES, photo
    from conftest import require_service

    require_service(
        "chromium + chromedriver",
        Path("/usr/bin/chromium").exists() and shutil.which("/usr/bin/chromedriver") is not None,
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.set_window_size(390, 844)
    find = driver.find_element
    wait = WebDriverWait(driver, 60)
    try:
        driver.get(page_server + "/")
        sure = tmp_path / "sure.png"
        sure.write_bytes(photo(CASES["sure"]))
        find(By.CSS_SELECTOR, "input[type=file]").send_keys(str(sure))
        wait.until(lambda d: find(By.ID, "feedback").is_displayed())
        assert "Was this right?" in find(By.ID, "feedback").text
        assert not find(By.ID, "feedback-consent").is_selected()
        find(By.ID, "feedback-yes").click()
        assert not find(By.ID, "feedback-send").is_enabled()  # no consent yet
        assert stored_files(folder) == []
        find(By.ID, "feedback-consent").click()
        assert find(By.ID, "feedback-send").is_enabled()
        find(By.ID, "feedback-send").click()
        wait.until(lambda d: "code is" in find(By.ID, "feedback-status").text)
        [sidecar] = list((folder / "pending").glob("*.json"))
        assert json.loads(sidecar.read_text())["label"] == "Banana Lady Finger 1"
        assert sidecar.stem in find(By.ID, "feedback-status").text
        find(By.ID, "feedback-delete").click()
        wait.until(lambda d: "deleted" in find(By.ID, "feedback-status").text)
        assert stored_files(folder) == []

        unsure = tmp_path / "unsure.png"
        unsure.write_bytes(photo(CASES["unsure"]))
        find(By.CSS_SELECTOR, "input[type=file]").send_keys(str(unsure))
        wait.until(lambda d: find(By.ID, "feedback").is_displayed())
        assert not find(By.ID, "feedback-yes").is_displayed()  # nothing to say yes to
        assert not find(By.ID, "feedback-consent").is_selected()  # unticked again
        find(By.ID, "feedback-no").click()
        options = [
            o.get_attribute("value")
            for o in driver.find_elements(By.CSS_SELECTOR, "#feedback-species option")
        ]
        assert "Mango 1" in options and "not a fruit" not in options
        find(By.ID, "feedback-label").send_keys("Maracuja 1")
        find(By.ID, "feedback-consent").click()
        find(By.ID, "feedback-send").click()
        wait.until(lambda d: "code is" in find(By.ID, "feedback-status").text)
        [sidecar] = list((folder / "pending").glob("*.json"))
        record = json.loads(sidecar.read_text())
        assert record["label"] == "Maracuja 1" and record["answer"] == "Mango 1"
    finally:
        driver.quit()


@pytest.mark.slow
def test_round_trip_photo_to_training_to_served_model(spark, sample_dir, tmp_path):
    """Photo -> consent -> stored -> reviewed -> `fruits run --input <sample> --input
    <confirmed>` -> served: the confirmed photos are training rows with their label and the
    train split, and the new run serves."""
    from fruits.config import PipelineConfig
    from fruits.pipeline import run_pipeline

    folder = tmp_path / "contributions"

    class SampleStub(AnswerStub):
        classes = sorted(p.name for p in (sample_dir / "Training").iterdir())

    app = create_app(ServeSettings(contributions=str(folder), reload_s=0), predictor=SampleStub())
    ids = []
    with TestClient(app) as c:
        for src in sorted((sample_dir / "Test" / "Kiwi 1").glob("*.jpg"))[:3]:
            buf = io.BytesIO()
            Image.open(src).transpose(Image.Transpose.ROTATE_90).save(buf, "JPEG")
            resp = contribute(c, buf.getvalue(), label="Kiwi 1")
            assert resp.status_code == 201, resp.text
            ids.append(resp.json()["id"])
    reviewed = CliRunner().invoke(cli_app, ["contributions", "review", str(folder), "--accept-all"])
    assert reviewed.exit_code == 0, reviewed.output

    out = tmp_path / "run"
    cfg = PipelineConfig(
        input=str(sample_dir), extra_inputs=(str(folder / "confirmed"),), output=str(out)
    )
    run_pipeline(cfg, spark=spark)
    rows = (
        spark.read.parquet(str(out / "images.parquet"))
        .where("path like '%/confirmed/Training/%'")
        .select("path", "label", "split")
        .collect()
    )
    assert sorted(Path(r["path"]).stem for r in rows) == sorted(ids)
    assert {r["label"] for r in rows} == {"Kiwi 1"}
    assert {r["split"] for r in rows} <= {"train", "val", "guard"}

    with TestClient(create_app(ServeSettings(run=str(out), reload_s=0))) as served:
        photo = next((folder / "confirmed" / "Training" / "Kiwi 1").glob("*.jpg")).read_bytes()
        answer = served.post("/v1/predict", files={"image": ("k.jpg", photo, "image/jpeg")})
        assert answer.status_code == 200, answer.text
        assert answer.json()["prediction"]["label"] == "Kiwi 1"
