"""`scalesweep serve`: the HTTP query API over a directory of sweeps."""
from __future__ import annotations

import os
from pathlib import Path

import typer

from .app import app, fail


@app.command("serve")
def serve(
    root: Path = typer.Option(Path("sweeps"), "--root", help="directory of sweeps (one subdirectory per sweep)"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind; anything but loopback needs a token"),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port"),
    token_env: str = typer.Option("SCALESWEEP_API_TOKEN", "--token-env",
                                  help="environment variable holding the API token (never pass it as an argument)"),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level"),
    stop_grace: float = typer.Option(2.0, "--stop-grace", min=0.0, max=3600.0,
                                     help="on SIGTERM or Ctrl-C, seconds the sweeps this server started have to "
                                          "stop gracefully (running trials checkpoint at their next report) before "
                                          "they are stopped at once (still stopped-by-user and resumable)"),
    tracking_uri: str = typer.Option(None, "--tracking-uri",
                                     help="MLflow tracking URI for every submitted sweep (clients may not choose "
                                          "one); default: each sweep's own SQLite store in its directory"),
    store: str = typer.Option(None, "--store",
                              help="object-store prefix (s3://bucket/prefix) holding every submitted sweep's store, "
                                   "checkpoints and Ray files under <prefix>/<sweep id> (clients may not choose one); "
                                   "default: in each sweep's directory"),
) -> None:
    """Serve the HTTP API (OpenAPI schema at /openapi.json): submit sweeps, read status, laws, proposals.
    SIGTERM or Ctrl-C stops it cleanly, in seconds: the sweeps it started are stopped (resumable) and nothing is
    left running."""
    from ..api import ApiConfigError, check_bind
    from ..api import serve as run_server

    token = os.environ.get(token_env) or None
    try:
        check_bind(host, token)
    except ApiConfigError as exc:
        fail(str(exc))
    if root.exists() and not root.is_dir():
        fail(f"--root {root}: not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"--root {root}: {exc.strerror or exc}")
    if tracking_uri is not None:  # the spec's own check: a scheme MLflow can use
        from pydantic import ValidationError

        from ...config.spec import TrackingSpec

        try:
            TrackingSpec(uri=tracking_uri)
        except ValidationError as exc:
            fail(f"--tracking-uri {tracking_uri}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}")
    if store is not None:  # the spec's own check: an object-store prefix the store can use
        from ...io.store_location import check_uri, is_uri

        if not is_uri(store):
            fail(f"--store {store}: not an object-store prefix; write s3://bucket/prefix (or leave it out: "
                 "each sweep keeps its store in its directory)")
        try:
            check_uri(store)
        except ValueError as exc:
            fail(f"--store {store}: {exc}")
    run_server(root, host=host, port=port, token=token, log_level=log_level, tracking_uri=tracking_uri,
               stop_grace_s=stop_grace, token_env=token_env, store=store)
