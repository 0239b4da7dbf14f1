"""Prediction service: every route, every bad input (4xx JSON and the server keeps serving), the bounded
queue, and concurrent requests against a live uvicorn server on loopback."""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import resnetlab
from conftest import TOY_CLASSES
from resnetlab.cli import build_parser
from resnetlab.serve import Busy, InferenceWorker, ServeLimits, create_app
from serving import png_bytes, running_server, train_tiny


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple:
    checkpoint, data = train_tiny(tmp_path_factory.mktemp("serve"))
    return resnetlab.load(checkpoint, device="cpu"), data


@pytest.fixture
def client(model):
    with TestClient(create_app(model[0])) as test_client:
        yield test_client


def one(name: str, data: bytes, kind: str = "image/png") -> dict:
    return {"file": (name, data, kind)}


def test_health_classes_page_and_openapi(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "resnet18" and health["classes"] == 3
    assert health["img_size"] == 16 and health["runtime"] == "pytorch" and health["explain"] is True
    assert health["limits"]["max_upload_bytes"] == 10 * 1024 * 1024 and health["limits"]["max_files"] == 16
    assert client.get("/classes").json() == {"classes": sorted(TOY_CLASSES)}
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="file-input"' in page.text and 'fetch(route' in page.text
    assert client.get("/docs").status_code == 200

    schema = client.get("/openapi.json").json()
    assert set(schema["paths"]) == {"/health", "/classes", "/predict", "/explain"}  # the page is not API
    predict = schema["paths"]["/predict"]["post"]
    form = predict["requestBody"]["content"]["multipart/form-data"]["schema"]
    fields = schema["components"]["schemas"][form["$ref"].split("/")[-1]]["properties"]
    assert {"file", "files"} <= set(fields)
    assert {"200", "413", "415", "422", "503"} <= set(predict["responses"])
    assert [p["name"] for p in predict["parameters"]] == ["topk", "min_confidence"]
    explain = schema["paths"]["/explain"]["post"]
    assert "image/png" in explain["responses"]["200"]["content"] and "501" in explain["responses"]
    assert "ImagePrediction" in schema["components"]["schemas"]


def test_predict_one_and_several_images_like_the_classifier(client, model):
    classifier, data = model
    files = sorted((data / "Val").rglob("*.png"))[::4]
    expected = classifier.predict([str(f) for f in files], topk=3)

    response = client.post("/predict", files=one(files[0].name, files[0].read_bytes()))
    assert response.status_code == 200
    (first,) = response.json()["predictions"]
    assert first["filename"] == files[0].name and first["label"] == expected[0].label
    assert [entry["label"] for entry in first["top"]] == [label for label, _ in expected[0].top]
    assert first["confidence"] == pytest.approx(expected[0].confidence, abs=1e-6)

    response = client.post("/predict?topk=2", files=[("files", (f.name, f.read_bytes(), "image/png")) for f in files])
    predictions = response.json()["predictions"]
    assert [p["filename"] for p in predictions] == [f.name for f in files]
    assert [p["label"] for p in predictions] == [p.label for p in expected]
    assert all(len(p["top"]) == 2 for p in predictions)
    assert sum(e["probability"] for e in predictions[0]["top"]) <= 1.0 + 1e-6

    jpeg = io.BytesIO()
    Image.open(files[0]).convert("L").save(jpeg, format="JPEG")  # another format and mode, same pipeline
    both = client.post("/predict", files=[("file", ("grey.jpg", jpeg.getvalue(), "image/jpeg")),
                                          ("files", (files[1].name, files[1].read_bytes(), "image/png"))])
    assert both.status_code == 200 and len(both.json()["predictions"]) == 2


def chunks(total: int):
    for _ in range(total // 10_000):
        yield b"x" * 10_000


BAD_INPUTS = [  # (id, request keyword arguments, status, words the message must contain)
    ("text file", {"files": one("notes.txt", b"hello, not an image", "text/plain")}, 415,
     "notes.txt: not an image"),
    ("empty file", {"files": one("empty.png", b"")}, 422, "empty.png: empty file (0 bytes)"),
    ("truncated png", {"files": one("cut.png", png_bytes(64)[:80])}, 422, "cut.png: image file is truncated"),
    ("pixel bomb", {"files": one("bomb.png", png_bytes(9000, mode="L"))}, 413,
     "9000 x 9000 = 81,000,000 pixels; this server accepts at most 50,000,000"),
    ("no file", {"data": {"note": "x"}}, 422, "no image: send one in the multipart field 'file'"),
    ("wrong field", {"files": {"image": ("a.png", png_bytes(), "image/png")}}, 422, "no image"),
    ("too many files", {"files": [("files", (f"{i}.png", png_bytes(), "image/png")) for i in range(17)]}, 413,
     "at most 16 (--max-files)"),
    ("declared too large", {"files": one("big.png", b"\0" * (10 * 1024 * 1024 + 1))}, 413,
     "upload too large: the request body is over 10,485,760 bytes (10 MB, --max-upload-mb)"),
    ("chunked too large", {"content": chunks(11 * 1024 * 1024),
                           "headers": {"content-type": "multipart/form-data; boundary=x"}}, 413, "upload too large"),
]


@pytest.mark.parametrize("request_kwargs,status,words", [case[1:] for case in BAD_INPUTS],
                         ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_gets_a_clear_4xx_json_error_and_the_server_keeps_serving(client, request_kwargs, status, words):
    response = client.post("/predict", **request_kwargs)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert words in response.json()["detail"]
    assert client.post("/predict", files=one("fine.png", png_bytes())).status_code == 200


def test_bad_query_values_are_422(client):
    for query in ("topk=0", "topk=x"):
        response = client.post(f"/predict?{query}", files=one("a.png", png_bytes()))
        assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "topk"]
    assert client.get("/predict").status_code == 405


def test_explain_returns_the_heat_map_png_of_the_predicted_class(client, model):
    from resnetlab.cam import overlay_for_image  # grad-cam is a dependency: /explain always has it

    picture = png_bytes(32)
    response = client.post("/explain", files=one("red.png", picture))
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    served = Image.open(io.BytesIO(response.content))
    assert served.format == "PNG"
    expected = overlay_for_image(model[0], Image.open(io.BytesIO(picture)).convert("RGB"))
    assert served.size == expected.size and np.array_equal(np.asarray(served.convert("RGB")), np.asarray(expected))
    assert client.post("/explain", files=one("x.txt", b"nope", "text/plain")).status_code == 415
    assert client.post("/explain").status_code == 422  # the file field is required


def test_explain_serves_only_single_pass_methods(client):
    # scorecam/ablationcam: one forward pass per channel on the model thread /predict waits on
    for method in ("scorecam", "ablationcam", "gradkam"):
        response = client.post("/explain", params={"method": method}, files=one("red.png", png_bytes(32)))
        assert response.status_code == 422, method
        detail = response.json()["detail"]
        assert f"'{method}' is not served" in detail and "gradcam, gradcam++, xgradcam, layercam, eigencam" in detail
    for method in ("gradcam++", "eigencam"):
        response = client.post("/explain", params={"method": method}, files=one("red.png", png_bytes(32)))
        assert response.status_code == 200 and Image.open(io.BytesIO(response.content)).format == "PNG", method


def test_inference_queue_is_bounded_and_batches_waiting_requests(model):
    classifier, _ = model
    worker = InferenceWorker(classifier, max_batch=32, max_pending=2)
    started, release = threading.Event(), threading.Event()

    def hold() -> str:
        started.set()
        release.wait(timeout=60)
        return "held"

    held = worker.submit_call(hold)
    assert started.wait(timeout=60)  # the worker thread is now busy inside hold()
    images = [torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8) for n in (2, 3)]
    waiting = [worker.submit_logits(batch) for batch in images]
    with pytest.raises(Busy):
        worker.submit_logits(images[0])  # queue full: refused at once, nothing grows

    app = create_app(classifier, ServeLimits(max_pending=1))
    with TestClient(app) as client:  # the same refusal over HTTP: 503 with Retry-After
        app_worker = app.state.worker
        app_started, app_release = threading.Event(), threading.Event()
        app_worker.submit_call(lambda: (app_started.set(), app_release.wait(timeout=60)))
        assert app_started.wait(timeout=60)
        filling = app_worker.submit_logits(images[0])
        response = client.post("/predict", files=one("a.png", png_bytes()))
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "the model is busy" in response.json()["detail"]
        app_release.set()
        filling.result(timeout=60)  # the queue's one place is free again (once the CI's busy worker raced this)
        assert client.post("/predict", files=one("a.png", png_bytes())).status_code == 200

    release.set()
    assert held.result(timeout=60) == "held"
    results = [future.result(timeout=60) for future in waiting]
    assert worker.batches == 1 and worker.images == 5, "both waiting requests ran as one batch of 5"
    for batch, logits in zip(images, results):
        np.testing.assert_allclose(logits.numpy(), classifier.logits(batch).numpy(), atol=1e-5)
    worker.close()


def test_closing_the_worker_finishes_the_requests_already_waiting(model):
    classifier, _ = model
    worker = InferenceWorker(classifier, max_batch=32, max_pending=4)
    started, release = threading.Event(), threading.Event()
    worker.submit_call(lambda: (started.set(), release.wait(timeout=60)))
    assert started.wait(timeout=60)
    waiting = worker.submit_logits(torch.zeros(2, 3, 16, 16, dtype=torch.uint8))
    closer = threading.Thread(target=worker.close)
    closer.start()  # queues the stop behind the waiting request
    release.set()
    closer.join(timeout=60)
    assert not closer.is_alive() and waiting.result(timeout=1).shape == (2, 3)


def test_concurrent_requests_on_a_live_loopback_server(model):
    classifier, data = model
    files = sorted((data / "Val").rglob("*.png"))
    expected = [p.label for p in classifier.predict([str(f) for f in files])]
    app = create_app(classifier)

    def request(i: int) -> tuple[int, str, str]:
        file = files[i % len(files)]
        response = http.post("/predict", files=one(file.name, file.read_bytes()))
        return response.status_code, expected[i % len(files)], response.json()["predictions"][0]["label"]

    with running_server(app) as url, httpx.Client(base_url=url, timeout=60) as http:
        with ThreadPoolExecutor(max_workers=8) as pool:  # 60 requests, 8 in flight
            results = list(pool.map(request, range(60)))
        health = http.get("/health").json()
        assert http.post("/predict", files=one("x.txt", b"junk", "text/plain")).status_code == 415
    assert all(status == 200 for status, _, _ in results)
    assert all(label == wanted for _, wanted, label in results)
    assert health["queue"]["images"] == 60 and 1 <= health["queue"]["batches"] <= 60


def test_serve_cli_defaults_are_safe():
    args = build_parser().parse_args(["serve", "runs/x/best.pt"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.max_upload_mb == 10 and args.max_files == 16
    assert ServeLimits().max_pixels == 50_000_000 < Image.MAX_IMAGE_PIXELS


def test_serve_cli_reports_a_bad_checkpoint(tmp_path: Path, capsys):
    from resnetlab.cli import main

    assert main(["serve", str(tmp_path / "missing.pt"), "--port", "0"]) == 1
    assert "resnetlab serve: error: checkpoint not found" in capsys.readouterr().err


# ---------------------------------------------------------------------- each ServeLimits limit, set small
def image_bytes(width: int, height: int, *, noise: bool = False) -> bytes:
    image = Image.effect_noise((width, height), 60).convert("RGB") if noise else Image.new("RGB", (width, height),
                                                                                           (230, 40, 40))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def limited(model):
    """A client of an app with the given limits: ``with limited(max_files=2) as client: ...``."""

    @contextmanager
    def make(**limits):
        with TestClient(create_app(model[0], ServeLimits(**limits))) as test_client:
            yield test_client

    return make


def test_the_upload_limit_is_the_one_configured(limited):
    big = image_bytes(64, 64, noise=True)
    assert len(big) > 4000 > len(png_bytes())
    with limited(max_upload_bytes=4000) as client:
        assert client.get("/health").json()["limits"]["max_upload_bytes"] == 4000
        assert client.post("/predict", files=one("small.png", png_bytes())).status_code == 200
        for route in ("/predict", "/explain"):  # the body limit is checked before any route
            response = client.post(route, files=one("big.png", big))
            assert response.status_code == 413, route
            assert response.json()["detail"] == ("upload too large: the request body is over 4,000 bytes "
                                                 "(0.00381 MB, --max-upload-mb)")
        chunked = client.post("/predict", content=(big[i:i + 1000] for i in range(0, len(big), 1000)),
                              headers={"content-type": "multipart/form-data; boundary=x"})
        assert chunked.status_code == 413 and "--max-upload-mb" in chunked.json()["detail"]
        # exactly at the limit is allowed through (to the form parser, which finds no image in it)
        headers = {"content-type": "multipart/form-data; boundary=x"}
        at_limit = client.post("/predict", content=b"-" * 4000, headers=headers)
        assert at_limit.status_code != 413 and client.post("/predict", content=b"-" * 4001,
                                                           headers=headers).status_code == 413
        assert client.post("/predict", files=one("small.png", png_bytes())).status_code == 200  # still serving


def test_the_pixel_limit_is_the_one_configured(limited):
    with limited(max_pixels=300) as client:
        assert client.get("/health").json()["limits"]["max_pixels"] == 300
        for width, height in ((15, 20), (17, 17)):  # 300 (the limit itself) and 289 pixels pass
            assert client.post("/predict", files=one("fine.png", image_bytes(width, height))).status_code == 200
        response = client.post("/predict", files=[("files", ("ok.png", image_bytes(10, 10), "image/png")),
                                                  ("files", ("wide.png", image_bytes(31, 10), "image/png"))])
        assert response.status_code == 413
        assert response.json()["detail"] == ("wide.png: 31 x 10 = 310 pixels; this server accepts at most 300 "
                                             "pixels per image (--max-pixels)")
        response = client.post("/explain", files=one("big.png", image_bytes(20, 20)))  # decoded the same way
        assert response.status_code == 413 and "(--max-pixels)" in response.json()["detail"]


def test_the_file_count_limit_is_the_one_configured(limited):
    def part(field: str, i: int) -> tuple:
        return field, (f"{i}.png", png_bytes(), "image/png")

    with limited(max_files=2) as client:
        assert client.get("/health").json()["limits"]["max_files"] == 2
        response = client.post("/predict", files=[part("files", 0), part("files", 1)])
        assert response.status_code == 200 and len(response.json()["predictions"]) == 2
        for parts in ([part("files", i) for i in range(3)], [part("file", 0), part("files", 1), part("files", 2)]):
            response = client.post("/predict", files=parts)  # 'file' and 'files' count together
            assert response.status_code == 413
            assert response.json()["detail"] == ("too many images in one request; this server accepts at most 2 "
                                                 "(--max-files)")


def test_more_parts_than_the_form_parser_takes_is_a_413_naming_the_limit(client):
    # Starlette stops at 1,000 files with a general 400; the app answers with the --max-files message instead
    tiny = png_bytes(2)
    response = client.post("/predict", files=[("files", (f"{i}.png", tiny, "image/png")) for i in range(1001)])
    assert response.status_code == 413
    assert response.json()["detail"] == "too many images in one request; this server accepts at most 16 (--max-files)"


def test_a_full_queue_is_a_503_with_retry_after_on_every_model_route(model):
    classifier, _ = model
    app = create_app(classifier, ServeLimits(max_pending=2))
    with TestClient(app) as client:
        worker = app.state.worker
        started, release = threading.Event(), threading.Event()
        try:
            worker.submit_call(lambda: (started.set(), release.wait(timeout=60)))
            assert started.wait(timeout=60)  # the model's thread is busy
            images = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
            waiting = [worker.submit_logits(images) for _ in range(2)]  # the queue is full
            health = client.get("/health").json()  # answered without the model
            assert health["queue"]["waiting"] == 2 and health["limits"]["max_pending"] == 2
            for route in ("/predict", "/explain"):
                response = client.post(route, files=one("a.png", png_bytes(32)))
                assert response.status_code == 503, route
                assert response.headers["retry-after"] == "1"
                assert response.json()["detail"] == "the model is busy (2 requests already waiting); retry shortly"
        finally:
            release.set()
        assert [tuple(future.result(timeout=60).shape) for future in waiting] == [(1, 3), (1, 3)]
        assert client.post("/predict", files=one("a.png", png_bytes())).status_code == 200  # served again


def test_the_content_not_the_declared_type_decides_what_is_an_image(client):
    response = client.post("/predict", files=one("lies.png", b"GIF? no, plain text", "image/png"))
    assert response.status_code == 415
    assert response.json()["detail"] == ("lies.png: not an image (unrecognised format) (expected a JPEG, PNG, WebP, "
                                         "BMP, GIF or TIFF image)")
    assert client.post("/predict", files=one("real.bin", png_bytes(), "text/plain")).status_code == 200
    mixed = client.post("/predict", files=[("files", ("good.png", png_bytes(), "image/png")),
                                           ("files", ("notes.txt", b"hello", "text/plain"))])
    assert mixed.status_code == 415 and mixed.json()["detail"].startswith("notes.txt: not an image")
