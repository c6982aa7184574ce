"""The search service over HTTP (FastAPI): a JSON API, the indexed images and their thumbnails, health, Prometheus
metrics, and one web page. Every error is a 4xx or 5xx with a one-line JSON body: {"error": "..."}."""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException

from simclr.errors import first_line
from simclr.search.service import MAX_K, QueryError, SearchService

PAGE = Path(__file__).with_name("page.html")
OPEN_ROUTES = ("/healthz",)  # answered without the token


@dataclass(frozen=True)
class ServiceOptions:
    max_upload_bytes: int = 20 * 1024 * 1024
    token: str | None = None  # bearer token required on every route but /healthz


class IndexedQuery(BaseModel):
    """A query by an image already in the index: its row, or its path."""

    row: int | None = None
    path: str | None = None
    k: int = Field(10, description=f"Neighbours to return, 1 to {MAX_K}.")


class BodyTooLarge(Exception):
    """A request body over the limit (raised while it arrives)."""


class BodyLimit:
    """ASGI middleware: refuse a body over `limit` bytes, by its declared length before reading it, or while it
    arrives when it declares none (chunked)."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            return await _error(413, f"request body of {int(declared):,} bytes is over the limit of "
                                     f"{self.limit:,} (--max-upload-mb)")(scope, receive, send)
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge(f"request body over the limit of {self.limit:,} bytes (--max-upload-mb)")
            return message

        await self.app(scope, counting_receive, send)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("simclr_search_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.errors = Counter("simclr_search_errors", "HTTP requests answered with a 4xx or 5xx", ["route"],
                              registry=self.registry)
        self.latency = Histogram("simclr_search_request_seconds", "HTTP request latency by route", ["route"],
                                 registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))


def create_app(service: SearchService, options: ServiceOptions = ServiceOptions()) -> FastAPI:
    """The FastAPI app over `service`; it answers 503 (except /healthz, which says so) until `service` is loaded."""
    app = FastAPI(title="simclr search", description="Search an image collection embedded by simclr-embed.",
                  version="1")
    metrics = _Metrics()

    @app.middleware("http")
    async def guard_and_measure(request: Request, call_next):
        started = time.perf_counter()
        response = await _guarded(request, call_next)
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)
        if response.status_code >= 400:
            metrics.errors.labels(route).inc()
        return response

    async def _guarded(request: Request, call_next):
        if options.token and request.url.path not in OPEN_ROUTES and not _authorised(request, options.token):
            return _error(401, "missing or wrong bearer token (Authorization: Bearer TOKEN, or ?token=TOKEN)")
        if not service.ready and request.url.path not in OPEN_ROUTES:
            return _error(503, "still loading the index and the model; GET /healthz says when ready")
        return await call_next(request)

    app.add_middleware(BodyLimit, limit=options.max_upload_bytes)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(_: Request, error: BodyTooLarge) -> JSONResponse:
        return _error(413, str(error))

    @app.exception_handler(QueryError)
    async def query_error(_: Request, error: QueryError) -> JSONResponse:
        return _error(error.status, str(error))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
        return _error(400, f"{where or 'request'}: {problem.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail))

    @app.post("/search", summary="Search by an uploaded image file (multipart: file, k) or by an indexed row or "
                                 "path (JSON: {\"row\": i, \"k\": 10} or {\"path\": \"...\", \"k\": 10})")
    async def search_route(request: Request) -> dict:
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise QueryError("multipart upload without a file field named 'file'")
            k = _k(form.get("k", "10"))
            data = await upload.read()
            return await _in_thread(lambda: service.search_upload(data, k).as_dict())
        try:
            query = IndexedQuery.model_validate_json(await request.body())
        except ValueError as error:
            raise QueryError(f"JSON body: {first_line(error)}") from None
        if (query.row is None) == (query.path is None):
            raise QueryError("give either \"row\" or \"path\" (or upload a file as multipart field 'file')")
        if query.row is not None:
            return await _in_thread(lambda: service.search_row(query.row, query.k).as_dict())
        return await _in_thread(lambda: service.search_path(query.path, query.k).as_dict())

    @app.get("/images/{row}", summary="The indexed image of a row, as its file")
    def image_route(row: int) -> FileResponse:
        return FileResponse(service.image_file(row))

    @app.get("/thumbs/{row}", summary="A JPEG thumbnail of the indexed image of a row (cached)")
    def thumbnail_route(row: int, size: int = 160) -> Response:
        return Response(service.thumbnail(row, size), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=3600"})

    @app.get("/healthz", summary="200 once the index and the model are loaded, 503 until then")
    def health_route() -> JSONResponse:
        return JSONResponse({"status": "ready" if service.ready else "loading"},
                            status_code=200 if service.ready else 503)

    @app.get("/info", summary="Model identity, index kind and size, recall estimate")
    def info_route() -> dict:
        return service.info()

    @app.get("/metrics", summary="Prometheus metrics: requests, errors, latency histograms")
    def metrics_route() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/reload", summary="Swap in the index as it is on disk now (requests in flight finish on the old one)")
    def reload_route() -> dict:
        try:
            service.reload()
        except ValueError as error:
            raise QueryError(f"reload failed, still serving the previous index: {first_line(error)}", 409) from None
        return service.info()

    @app.get("/", include_in_schema=False)
    def page_route() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html")

    return app


def _k(value) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise QueryError(f"k {value!r}: not a whole number") from None


async def _in_thread(work):
    """Decoding, embedding and searching release the GIL: run them off the event loop."""
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(work)


def _authorised(request: Request, token: str) -> bool:
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip() or \
        request.query_params.get("token", "")
    return hmac.compare_digest(given.encode(), token.encode())
