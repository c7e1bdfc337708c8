"""The HTTP query API: submit sweeps and read their status, fits, laws and proposals (FastAPI).

A server manages a ROOT directory of sweeps, one subdirectory per sweep. The package is split by
job: `schemas` (request and response shapes, limits), `auth` (bind rule, token), `submission`
(checks of a submitted spec), `supervisor` (the sweeps' controller processes), `registry` (the
sweeps under ROOT, answered through `orchestrator.app.query`) and `routes` (the FastAPI app and
`serve`). This module is their public face; `python -m orchestrator.app.api supervise SWEEP_DIR`
(`__main__`) runs one sweep's supervisor.

Endpoints, auth and errors are documented in docs/api.md.
"""
from __future__ import annotations

from .auth import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TOKEN_ENV, TOKEN_HEADER, check_bind, is_loopback
from .registry import SweepRegistry
from .routes import create_app, serve
from .schemas import (EXAMPLE_SPEC, MAX_BODY_BYTES, MAX_BOOTSTRAP, MAX_BUDGETS, MAX_RANGE_COUNT, MAX_TRIALS,
                          ApiConfigError, ApiError)
from .supervisor import CONTROLLER_FILE, LOG_FILE, read_controller, supervise, update_controller

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_TOKEN_ENV", "TOKEN_HEADER", "check_bind", "is_loopback",
           "SweepRegistry", "create_app", "serve", "EXAMPLE_SPEC", "MAX_BODY_BYTES", "MAX_BOOTSTRAP", "MAX_BUDGETS",
           "MAX_RANGE_COUNT", "MAX_TRIALS", "ApiConfigError", "ApiError", "CONTROLLER_FILE", "LOG_FILE",
           "read_controller", "supervise", "update_controller"]
