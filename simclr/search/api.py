"""The search service over HTTP (FastAPI): a JSON API, the indexed images and their thumbnails, health, Prometheus
metrics, and one web page. Every error is a 4xx or 5xx with a one-line JSON body: {"error": "..."}.

What guards it (README, "Bad input"): requests name one of the service's own hosts (no DNS rebinding); a POST
comes from the service's own page or no browser page at all (Origin) with a JSON or multipart body (no
cross-site form); file routes send the decoded format's media type with nosniff and a sandbox policy; bodies
have a size limit, however they arrive."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, Field, ValidationError
from starlette.exceptions import HTTPException

from simclr.errors import first_line
from simclr.search.service import MAX_K, QueryError, SearchService

PAGE = Path(__file__).with_name("page.html")
OPEN_ROUTES = ("/healthz",)  # answered without the token
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
FILE_ROUTES = ("/images/", "/thumbs/")
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                    "X-Frame-Options": "DENY"}


@dataclass(frozen=True)
class ServiceOptions:
    max_upload_bytes: int = 20 * 1024 * 1024
    token: str | None = None  # bearer token required on every route but /healthz
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS  # Host header values answered (None: any)
    head_timeout: float = 10.0  # seconds for a request head to arrive whole
    body_idle_timeout: float = 30.0  # seconds a request body may pause
    max_connections: int | None = None  # None: connection_cap()


WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def allowed_hosts_for(host: str, extra: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """The Host names a service bound to `host` answers to: localhost's, the bound address and `extra`. Bound to
    every interface it answers any name (clients reach it by names it cannot know; give a token) unless `extra`
    names them."""
    if host in WILDCARD_HOSTS and not extra:
        return None
    bound = () if host in WILDCARD_HOSTS else (host.strip("[]").lower(),)
    return tuple(dict.fromkeys((*LOOPBACK_HOSTS, *bound, *(name.lower() for name in extra))))


class SafeJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: a path that is not UTF-8 (a Latin-1 byte, held by Python as a
    surrogate, as the sidecar holds it) comes out as "\\udce9" (os.fsencode of the parsed string gives the bytes
    back) instead of failing the whole answer."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class IndexedQuery(BaseModel):
    """A query by an image already in the index: its row, or its path."""

    row: int | None = Field(None, description="The indexed row to search from (give this or path).")
    path: str | None = Field(None, description="The indexed path to search from, as embedded (give this or row).")
    k: int = Field(10, description=f"Neighbours to return, 1 to {MAX_K}.")
    exclude_query: bool = Field(False, description="Leave the query's own row out of the neighbours: k others are "
                                                   "returned, ranked from 1 (default false: it comes first).")


SEARCH_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": IndexedQuery.model_json_schema()},
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "An image file in a format Pillow reads."},
        "k": {"type": "integer", "default": 10, "description": f"Neighbours to return, 1 to {MAX_K}."}}}}}}}


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
        received, started = 0, False

        async def counting_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise BodyTooLarge(f"request body over the limit of {self.limit:,} bytes (--max-upload-mb)")
            return message

        async def tracking_send(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except Exception as error:  # a chunked body over the limit, raised through the app's own middleware
            too_large = _found(error, BodyTooLarge)
            if too_large is None or started:
                raise
            await _error(413, str(too_large))(scope, receive, send)


def _found(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`error` itself, one in its exception group, or its cause, when it is a `kind`."""
    if isinstance(error, kind):
        return error
    inner = list(getattr(error, "exceptions", ()))  # an ExceptionGroup's
    inner += [cause for cause in (error.__cause__, error.__context__) if cause is not None]
    return next((found for found in (_found(each, kind) for each in inner) if found is not None), None)


def _error(status: int, message: str) -> JSONResponse:
    return SafeJSONResponse({"error": message}, status_code=status)


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
                  version="1", default_response_class=SafeJSONResponse)
    metrics = _Metrics()
    page, page_policy = PAGE.read_bytes(), _page_policy(PAGE.read_text())

    @app.middleware("http")
    async def guard_and_measure(request: Request, call_next):
        started = time.perf_counter()
        response = await _guarded(request, call_next)
        response.headers.update(SECURITY_HEADERS)
        if request.url.path.startswith(FILE_ROUTES):  # a file that is also a page runs nothing, even opened alone
            response.headers["Content-Security-Policy"] = "sandbox"
        route = getattr(request.scope.get("route"), "path", "unmatched")
        metrics.requests.labels(route, str(response.status_code)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - started)
        if response.status_code >= 400:
            metrics.errors.labels(route).inc()
        return response

    async def _guarded(request: Request, call_next):
        refused = _refused_host(request, options.allowed_hosts) or _refused_post(request)
        if refused:
            return refused
        if options.token and request.url.path not in OPEN_ROUTES and not _authorised(request, options.token):
            return _error(401, "missing or wrong bearer token (Authorization: Bearer TOKEN, or ?token=TOKEN)")
        if not service.ready and request.url.path not in OPEN_ROUTES:
            return _error(503, "still loading the index and the model; GET /healthz says when ready")
        return await call_next(request)

    app.add_middleware(BodyLimit, limit=options.max_upload_bytes)

    @app.exception_handler(QueryError)
    async def query_error(_: Request, error: QueryError) -> JSONResponse:
        return _error(error.status, str(error))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, error: RequestValidationError) -> JSONResponse:
        return _error(400, _first_problem(error.errors(), "request"))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail))

    @app.post("/search", summary="Search by an uploaded image file (multipart: file, k) or by an indexed row or "
                                 "path (JSON: {\"row\": i, \"k\": 10, \"exclude_query\": false} or "
                                 "{\"path\": \"...\", ...})", openapi_extra=SEARCH_BODY)
    async def search_route(request: Request) -> SafeJSONResponse:
        """Answers `{"results": [{"query", "row", "neighbours": [{"rank", "score", "path", "row"}]}], "embedding",
        "timing_ms"}`: `query` is the indexed path (or "upload"), `row` its row (null for an upload). With
        `"exclude_query": true` a row or path search leaves the query's own row out and still returns k
        neighbours (it searches k + 1 and drops the query)."""
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            upload = form.get("file")
            if upload is None or isinstance(upload, str):
                raise QueryError("multipart upload without a file field named 'file'")
            k = _k(form.get("k", "10"))
            data = await upload.read()
            return SafeJSONResponse(await _in_thread(lambda: service.search_upload(data, k).as_dict()))
        try:
            query = IndexedQuery.model_validate_json(await request.body())
        except ValidationError as error:
            raise QueryError(f"JSON body: {_first_problem(error.errors())}") from None
        if (query.row is None) == (query.path is None):
            raise QueryError("give either \"row\" or \"path\" (or upload a file as multipart field 'file')")
        if query.row is not None:
            return SafeJSONResponse(await _in_thread(
                lambda: service.search_row(query.row, query.k, query.exclude_query).as_dict()))
        return SafeJSONResponse(await _in_thread(
            lambda: service.search_path(query.path, query.k, query.exclude_query).as_dict()))

    @app.get("/images/{row}", summary="The indexed image of a row, as its file (only the file that was embedded: "
                                      "409 when it changed since)")
    def image_route(row: int) -> StreamingResponse:
        opened = service.open_file(row)
        return StreamingResponse(opened.chunks(), media_type=opened.media_type,
                                 headers={"Content-Length": str(opened.size)})

    @app.get("/thumbs/{row}", summary="A JPEG thumbnail of the indexed image of a row (cached)")
    def thumbnail_route(row: int, size: int = 160) -> Response:
        return Response(service.thumbnail(row, size), media_type="image/jpeg",
                        headers={"Cache-Control": "max-age=3600"})

    @app.get("/healthz", summary="200 once the index and the model are loaded, 503 until then")
    def health_route() -> SafeJSONResponse:
        return SafeJSONResponse({"status": "ready" if service.ready else "loading"},
                                status_code=200 if service.ready else 503)

    @app.get("/info", summary="Model identity, index kind and size, recall estimate")
    def info_route() -> SafeJSONResponse:
        return SafeJSONResponse(service.info())

    @app.get("/metrics", summary="Prometheus metrics: requests, errors, latency histograms")
    def metrics_route() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/reload", summary="Swap in the index as it is on disk now (requests in flight finish on the old one)")
    def reload_route() -> SafeJSONResponse:
        try:
            service.reload()
        except ValueError as error:
            raise QueryError(f"reload failed, still serving the previous index: {first_line(error)}", 409) from None
        return SafeJSONResponse(service.info())

    @app.get("/", include_in_schema=False)
    def page_route() -> Response:
        return Response(page, media_type="text/html; charset=utf-8",
                        headers={"Content-Security-Policy": page_policy})

    return app


def _first_problem(problems: list[dict], whole: str = "") -> str:
    """The first of pydantic's validation problems as "field: message" (`whole` in place of the field for a
    problem with the whole input, else the message alone)."""
    problem = problems[0]
    where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body") or whole
    message = first_line(problem.get("msg", "invalid"))
    return f"{where}: {message}" if where else message


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
    """`Authorization: Bearer TOKEN` (the scheme in any case, RFC 7235) or ?token=TOKEN."""
    scheme, _, given = request.headers.get("authorization", "").strip().partition(" ")
    if scheme.lower() != "bearer":
        given = request.query_params.get("token", "")
    return hmac.compare_digest(given.strip().encode(), token.encode())


def _refused_host(request: Request, allowed: tuple[str, ...] | None) -> JSONResponse | None:
    """400 unless the Host header names one of `allowed` (any port): a page whose name was rebound to this
    address sends its own name, and reads nothing."""
    if allowed is None:
        return None
    host = request.headers.get("host", "")
    name = urlsplit(f"//{host}").hostname or ""
    if name.lower() in allowed:
        return None
    return _error(400, f"Host {host!r} is not a name this service answers to ({', '.join(allowed)}; "
                       "simclr search-server --allowed-host adds one)")


def _refused_post(request: Request) -> JSONResponse | None:
    """403 for a POST from another site's page (its Origin is not this service's), 415 for a body a cross-site
    form could send without asking (text/plain, urlencoded) where JSON is expected."""
    if request.method != "POST":
        return None
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc.lower() != request.headers.get("host", "").lower():
        return _error(403, f"cross-site request refused: Origin {origin!r} is not this service")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    accepted = ("application/json", "multipart/form-data") if request.url.path == "/search" else \
        ("application/json", "")
    if kind not in accepted:
        return _error(415, f"Content-Type {kind or 'none'!r}: send application/json"
                           + (" (or multipart/form-data with a file field)" if request.url.path == "/search" else ""))
    return None


def _page_policy(page: str) -> str:
    """The page's Content-Security-Policy: its own inline script and style (by their hashes) and nothing else."""
    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()}'"
                        for block in blocks)

    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
            "img-src 'self' blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
