"""The object storage and stream blueprints, and byte counting in WSGI, Flask and Django views.

Event shape (JavaScript 0.6.1 ``trackObjectStorage`` / ``trackStreamBytes``): ``{"bytes": int, **metadata}``,
``bytes`` only when given. Events are checked at the local Dodo server.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.util import setup_testing_defaults
from wsgiref.validate import validator

import pytest
import requests
from flask import Flask, Response, request
from pytest_django import Settings

from dodo_ingest import (
    Ingestion,
    ValidationError,
    meter_stream,
    meter_upload,
    track_object_storage,
    track_stream_bytes,
)
from dodo_ingest.blueprints import CountingAsyncIterator, CountingIterator, CountingReader, count_bytes
from dodo_ingest.localserver import LocalDodoServer
from tests.blueprints import django_app


def stored(server: LocalDodoServer) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e["event_name"], e["customer_id"], e["metadata"]) for e in server.events()]


@pytest.fixture
def ingestion(make_ingestion: Callable[..., Ingestion]) -> Ingestion:
    return make_ingestion(event_name="bytes_used")


# --- the track functions -------------------------------------------------------------------------------------------


def test_track_object_storage_and_stream_bytes(dodo_server: LocalDodoServer, ingestion: Ingestion) -> None:
    assert track_object_storage(ingestion, "cus_1", bytes=1048576, metadata={"bucket": "b"}) is True
    assert track_stream_bytes(ingestion, "cus_2", bytes=0, event_name="stream_consumption") is True
    assert track_object_storage(ingestion, "cus_3", event_id="upload-42")  # no bytes: no key, as in JavaScript
    assert ingestion.flush()
    assert stored(dodo_server) == [
        ("bytes_used", "cus_1", {"bytes": 1048576, "bucket": "b"}),
        ("stream_consumption", "cus_2", {"bytes": 0}),
        ("bytes_used", "cus_3", {}),
    ]
    assert dodo_server.get_event("upload-42") is not None


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10", float("nan")])
def test_bytes_must_be_a_whole_number(ingestion: Ingestion, bad: Any) -> None:
    with pytest.raises(ValidationError) as info:
        track_object_storage(ingestion, "cus_1", bytes=bad)
    assert info.value.field == "bytes"
    with pytest.raises(ValidationError, match=r"^bytes: "):
        track_stream_bytes(ingestion, "cus_1", bytes=bad)


def test_bad_customer_or_metadata_fail_before_anything_streams(ingestion: Ingestion) -> None:
    with pytest.raises(ValidationError, match="customer_id"):
        meter_stream(ingestion, [b"x"], "")
    with pytest.raises(ValidationError, match=r"metadata\.tags"):
        meter_upload(ingestion, io.BytesIO(b"x"), "cus_1", metadata={"tags": ["a"]})


# --- counting ------------------------------------------------------------------------------------------------------


def test_count_bytes_picks_the_wrapper_and_counts_wire_bytes() -> None:
    closed: list[int] = []
    assert isinstance(count_bytes(io.BytesIO(b"")), CountingReader)
    assert isinstance(count_bytes(iter([])), CountingIterator)
    body = count_bytes([b"ab", "é", bytearray(b"c"), memoryview(b"de"), 7], closed.append)
    assert list(body) == [b"ab", "é", bytearray(b"c"), memoryview(b"de"), 7]
    assert body.byte_count == 2 + 2 + 1 + 2 + 1 and closed == [8]
    body.close()
    assert closed == [8], "once"
    with pytest.raises(TypeError):
        count_bytes(42)


def test_a_reader_counts_the_furthest_position_not_rereads() -> None:
    closed: list[int] = []
    raw = io.BytesIO(b"0123456789" * 100)
    with CountingReader(raw, closed.append) as reader:
        assert reader.read(300) == raw.getvalue()[:300]
        reader.seek(0)  # e.g. boto3 rewinding to retry a part
        buffer = bytearray(500)
        assert reader.readinto(buffer) == 500
        assert reader.readline() == b"0123456789" * 50
        assert reader.byte_count == 1000
        assert reader.read() == b""
        assert reader.tell() == 1000 and reader.seekable()  # other attributes reach the file
    assert raw.closed and closed == [1000]


def test_a_failing_iterator_still_reports_what_went_through() -> None:
    closed: list[int] = []

    def body() -> Iterator[bytes]:
        yield b"abc"
        raise RuntimeError("export failed")

    counted = CountingIterator(body(), closed.append)
    with pytest.raises(RuntimeError):
        list(counted)
    assert closed == [3]


# --- uploads -------------------------------------------------------------------------------------------------------


def test_meter_upload_bills_a_successful_upload_once(dodo_server: LocalDodoServer, ingestion: Ingestion) -> None:
    def fake_store(fileobj: Any) -> None:  # reads in parts and retries the first part, like an S3 client
        fileobj.read(4096)
        fileobj.seek(0)
        while fileobj.read(4096):
            pass

    with meter_upload(ingestion, io.BytesIO(b"z" * 10_000), "cus_1", metadata={"bucket": "media"}) as body:
        fake_store(body)

    def failing_store(fileobj: Any) -> None:
        fileobj.read(5)
        raise OSError("the store refused it")

    with pytest.raises(OSError), meter_upload(ingestion, io.BytesIO(b"z" * 10), "cus_2") as body:
        failing_store(body)  # a failed upload stores nothing: not billed
    upload = meter_upload(ingestion, io.BytesIO(b"q" * 7), "cus_3")
    upload.read()
    upload.close()  # without a `with` block, closing sends
    assert ingestion.flush()
    assert stored(dodo_server) == [
        ("bytes_used", "cus_1", {"bytes": 10_000, "bucket": "media"}),
        ("bytes_used", "cus_3", {"bytes": 7}),
    ]


# --- streamed bodies: WSGI ----------------------------------------------------------------------------------------


def wsgi_app(ingestion: Ingestion) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "text/csv")])
        rows = (f"{i},row\n".encode() for i in range(100))
        return meter_stream(ingestion, rows, "cus_wsgi", metadata={"export": "csv"})

    return validator(app)  # PEP 3333, checked by wsgiref


def call_wsgi(app: Any, read_chunks: int | None = None) -> bytes:
    """What a WSGI server does: iterate the body (all of it, or stop early as for a client gone), then close it."""
    environ: dict[str, Any] = {"QUERY_STRING": ""}
    setup_testing_defaults(environ)
    body = app(environ, lambda status, headers, exc_info=None: lambda data: None)
    out = b""
    try:
        chunks = iter(body)
        for _ in range(read_chunks) if read_chunks is not None else iter(int, 1):
            try:
                out += next(chunks)
            except StopIteration:
                break
    finally:
        body.close()
    return out


def test_wsgi_streamed_body_is_billed_to_its_end_and_a_disconnect_for_what_was_sent(
    dodo_server: LocalDodoServer, ingestion: Ingestion
) -> None:
    full = call_wsgi(wsgi_app(ingestion))
    partial = call_wsgi(wsgi_app(ingestion), read_chunks=10)
    assert ingestion.flush()
    assert [m["bytes"] for _, _, m in stored(dodo_server)] == [len(full), len(partial)]
    assert len(partial) == sum(len(f"{i},row\n") for i in range(10))
    assert stored(dodo_server)[0][2] == {"bytes": len(full), "export": "csv"}


def test_wsgi_over_a_real_loopback_server(dodo_server: LocalDodoServer, ingestion: Ingestion) -> None:
    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    with make_server("127.0.0.1", 0, wsgi_app(ingestion), handler_class=Quiet) as httpd:
        thread = threading.Thread(target=httpd.handle_request, daemon=True)
        thread.start()
        body = requests.get(f"http://127.0.0.1:{httpd.server_port}/export", timeout=10).content
        thread.join(10)
    assert ingestion.flush()
    assert stored(dodo_server) == [("bytes_used", "cus_wsgi", {"bytes": len(body), "export": "csv"})]


# --- streamed bodies and uploads: Flask ---------------------------------------------------------------------------


def test_flask_streamed_download_and_streamed_upload(dodo_server: LocalDodoServer, ingestion: Ingestion) -> None:
    app = Flask(__name__)

    @app.get("/video")
    def video() -> Response:
        frames = (b"\x00" * 1024 for _ in range(64))
        return Response(meter_stream(ingestion, frames, "cus_flask", metadata={"stream_type": "video"}))

    @app.post("/upload")
    def upload() -> str:
        with meter_stream(ingestion, request.stream, "cus_flask", metadata={"kind": "upload"}) as body:
            size = len(body.read())
        return str(size)

    client = app.test_client()
    response = client.get("/video")
    assert len(response.data) == 64 * 1024
    assert dodo_server.event_count() == 0
    response.close()  # the server closes the body when the response is done
    assert client.post("/upload", data=b"u" * 3000).text == "3000"
    assert ingestion.flush()
    assert stored(dodo_server) == [
        ("bytes_used", "cus_flask", {"bytes": 65536, "stream_type": "video"}),
        ("bytes_used", "cus_flask", {"bytes": 3000, "kind": "upload"}),
    ]


# --- streamed bodies and uploads: Django --------------------------------------------------------------------------


@pytest.fixture
def django_views(settings: Settings, ingestion: Ingestion) -> Iterator[None]:
    settings.ROOT_URLCONF = "tests.blueprints.django_app"
    settings.MIDDLEWARE = []
    django_app.INGESTION[:] = [ingestion]
    yield
    django_app.INGESTION.clear()


@pytest.mark.django_db  # closing a response sends request_finished, whose handler checks the connection
@pytest.mark.usefixtures("django_views")
def test_django_streaming_response_and_upload(dodo_server: LocalDodoServer, ingestion: Ingestion) -> None:
    from django.test import Client

    client = Client()
    response = client.get("/export")
    assert len(b"".join(response.streaming_content)) == django_app.TOTAL
    response.close()
    assert client.post("/upload", data=b"p" * 1000, content_type="application/octet-stream").content == b"1000"
    assert ingestion.flush()
    assert stored(dodo_server) == [
        ("bytes_used", "cus_django", {"bytes": django_app.TOTAL, "view": "export"}),
        ("bytes_used", "cus_django", {"bytes": 1000, "view": "upload"}),
    ]


@pytest.mark.usefixtures("django_views")
async def test_django_async_streaming_response(dodo_server: LocalDodoServer, ingestion: Ingestion) -> None:
    from django.test import AsyncClient

    response = await AsyncClient().get("/export-async")
    assert response.is_async  # Django iterates the body on the event loop
    body = b"".join([chunk async for chunk in response.streaming_content])
    assert len(body) == django_app.TOTAL
    assert ingestion.flush()
    assert stored(dodo_server) == [("bytes_used", "cus_django", {"bytes": django_app.TOTAL, "view": "async"})]


async def test_async_iterator_closed_early_reports_once() -> None:
    closed: list[int] = []

    async def chunks() -> Any:
        for _ in range(10):
            yield b"ab"

    counted = CountingAsyncIterator(chunks(), closed.append)
    assert await counted.__anext__() == b"ab"
    await counted.aclose()
    counted.close()
    assert closed == [2]
