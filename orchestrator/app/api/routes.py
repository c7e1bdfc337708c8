"""The HTTP routes: auth middleware, error handlers, the endpoints, and the server's lifetime.

Endpoints, auth and errors are documented in docs/api.md; each endpoint hands its question to
the registry (`registry.py`), which answers through the query service.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import uuid
from pathlib import Path
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .auth import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TOKEN_ENV, TOKEN_HEADER, check_bind, token_ok
from .registry import SweepRegistry
from .schemas import (ERRORS, EXAMPLE_SPEC, MAX_BODY_BYTES, ApiError, Bootstrap, Budget, LawsDoc, Proposal,
                      SweepCreated, SweepDetail, SweepSummary, links)
from .supervisor import STOP_GRACE_S

log = logging.getLogger("orchestrator.app.api")


def _finite_schema(obj: Any) -> Any:
    """A JSON schema without non-finite numbers (pydantic emits `default: inf`; JSON has no inf)."""
    if isinstance(obj, dict):
        return {k: _finite_schema(v) for k, v in obj.items()
                if not (isinstance(v, float) and not math.isfinite(v))}
    if isinstance(obj, list):
        return [_finite_schema(v) for v in obj]
    return obj


def _spec_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """(SweepSpec request schema, its component definitions) for the OpenAPI document."""
    from ...config.spec import SweepSpec

    schema = _finite_schema(SweepSpec.model_json_schema(ref_template="#/components/schemas/{model}"))
    defs = schema.pop("$defs", {})
    return schema, defs


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for e in errors:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "path", "body"))
        parts.append(f"{loc or 'request'}: {e.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def create_app(root: str | Path, *, token: Optional[str] = None, launch: bool = True,
               tracking_uri: Optional[str] = None, stop_grace_s: float = STOP_GRACE_S,
               token_env: str = DEFAULT_TOKEN_ENV, store: Optional[str] = None) -> FastAPI:
    """The API over the sweeps in `root`; `launch=False` validates and records specs but starts nothing.
    `tracking_uri`: the MLflow every submitted sweep tracks to (None: each sweep's own SQLite store);
    `store`: an object-store prefix (s3://bucket/prefix) under which each submitted sweep keeps its store.
    When the app shuts down, the sweeps it started are stopped (`stop_grace_s` each to end gracefully);
    `token_env` names the variable the token came from (kept out of the sweeps' environment)."""
    registry = SweepRegistry(Path(root), launch=launch, tracking_uri=tracking_uri, token_env=token_env, store=store)
    token_bytes = token.encode("utf-8") if token else None
    spec_schema, spec_defs = _spec_schema()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        # the sweeps this server started end with it: stopped (resumable), never orphaned
        await run_in_threadpool(registry.shutdown, stop_grace_s)

    app = FastAPI(
        title="scalesweep",
        version="1",
        description="Scaling-law sweeps: submit specs, read status, fitted laws and compute-optimal proposals.",
        lifespan=lifespan,
    )
    app.state.registry = registry

    @app.middleware("http")
    async def auth(request: Request, call_next):
        if token_bytes is not None and not token_ok(request, token_bytes):
            return JSONResponse({"detail": f"missing or wrong token: send 'Authorization: Bearer <token>' "
                                           f"or '{TOKEN_HEADER}: <token>'"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        errors = jsonable_encoder(exc.errors(), custom_encoder={float: lambda v: v if math.isfinite(v) else str(v)})
        errors = [{k: e.get(k) for k in ("loc", "msg", "type")} for e in errors]
        return JSONResponse({"detail": _validation_message(errors), "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first matching route's methods; list every route's.
            allowed = set()
            for route in app.router.routes:
                match, _ = route.matches({**request.scope, "method": "GET"})
                if match != Match.NONE and getattr(route, "methods", None):
                    allowed |= set(route.methods)
            headers["Allow"] = ", ".join(sorted(allowed))
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        # A real bug: full traceback in the server log, an id the client can quote.
        ref = uuid.uuid4().hex[:12]
        log.error("internal error %s on %s %s", ref, request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": f"internal error (ref {ref}); see the server log"}, status_code=500)

    @app.post("/sweeps", status_code=202, response_model=SweepCreated, responses=ERRORS,
              summary="Submit a sweep spec and start it",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": spec_schema, "example": EXAMPLE_SPEC}}}})
    async def submit(request: Request) -> dict[str, Any]:
        """Validate the spec (JSON, the YAML spec's fields), create ROOT/<name> and start the sweep.

        `output_dir` is ignored: the sweep is always written to ROOT/<name>.
        """
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if ctype and ctype != "application/json" and not ctype.endswith("+json"):
            raise ApiError(415, f"send the spec as application/json, not {ctype}")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            raise ApiError(413, f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise ApiError(422, f"body: not valid JSON: {exc}") from None
        sweep_id = await run_in_threadpool(registry.create, data)
        status = "running" if launch else "not_started"
        return {"id": sweep_id, "status": status, "links": links(sweep_id)}

    @app.get("/sweeps", response_model=list[SweepSummary], responses=ERRORS, summary="List sweeps")
    def list_sweeps() -> list[dict[str, Any]]:
        """Every sweep under the root: status, trial state counts, FLOPs spent."""
        out = []
        for sid in registry.ids():
            try:
                out.append(registry.summary(sid))
            except ApiError:
                continue  # removed while listing
        return out

    @app.get("/sweeps/{sweep_id}", response_model=SweepDetail, responses=ERRORS, summary="One sweep")
    def get_sweep(sweep_id: str) -> dict[str, Any]:
        """Status (controller and trials), FLOPs spent, spec summary and the latest fit.json."""
        return registry.detail(sweep_id)

    @app.get("/sweeps/{sweep_id}/proposals", response_model=list[Proposal], responses=ERRORS,
             summary="Compute-optimal proposals")
    def get_proposals(sweep_id: str, budget: Budget, bootstrap: Bootstrap = None) -> list[dict[str, Any]]:
        """(N*, D*, lr, batch, predicted loss, intervals) for each budget, from the finished trials."""
        return registry.proposals(sweep_id, [float(b) for b in budget], bootstrap)

    @app.get("/sweeps/{sweep_id}/laws", response_model=LawsDoc, responses=ERRORS, summary="Fitted laws")
    def get_laws(sweep_id: str, bootstrap: Bootstrap = None) -> dict[str, Any]:
        """L(N, D) with intervals; lr*(N, D) and batch*(D) when the trials allow (else a reason)."""
        return registry.laws(sweep_id, bootstrap)

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = default_openapi()
            doc.setdefault("components", {}).setdefault("schemas", {}).update(spec_defs)
            if token_bytes is not None:
                doc["components"]["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer"},
                    "token": {"type": "apiKey", "in": "header", "name": TOKEN_HEADER},
                }
                doc["security"] = [{"bearer": []}, {"token": []}]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def serve(root: str | Path, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, token: Optional[str] = None,
          log_level: str = "info", tracking_uri: Optional[str] = None, stop_grace_s: float = STOP_GRACE_S,
          token_env: str = DEFAULT_TOKEN_ENV, store: Optional[str] = None) -> None:
    """Run the API with uvicorn until SIGTERM or Ctrl-C (refuses a public bind without a token);
    on either it stops accepting requests, stops the sweeps it started and returns."""
    import uvicorn

    check_bind(host, token)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    app = create_app(root, token=token, tracking_uri=tracking_uri, stop_grace_s=stop_grace_s, token_env=token_env,
                     store=store)
    received: list[int] = []
    # uvicorn re-raises the signal that stopped it once it has shut down, with the handlers it
    # found installed: these record it, so a clean shutdown returns (exit 0) instead of dying by it.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: received.append(signum))
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=True)
    if received:
        log.info("stopped on %s", signal.Signals(received[0]).name)
