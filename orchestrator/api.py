"""The HTTP query API: submit sweeps and read their status, fits, laws and proposals (FastAPI).

A server manages a ROOT directory of sweeps, one subdirectory per sweep. The API is split by job
into modules beside this one: `api_schemas` (request and response shapes, limits), `api_auth`
(bind rule, token), `api_submission` (checks of a submitted spec), `api_supervisor` (the sweeps'
controller processes), `api_registry` (the sweeps under ROOT, answered through
`orchestrator.query`) and `api_routes` (the FastAPI app and `serve`). This module is their public
face, and `python -m orchestrator.api supervise SWEEP_DIR` runs one sweep's supervisor.

Endpoints, auth and errors are documented in docs/api.md.
"""
from __future__ import annotations

import sys

from .api_auth import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_TOKEN_ENV, TOKEN_HEADER, check_bind, is_loopback
from .api_registry import SweepRegistry
from .api_routes import create_app, serve
from .api_schemas import (EXAMPLE_SPEC, MAX_BODY_BYTES, MAX_BOOTSTRAP, MAX_BUDGETS, MAX_RANGE_COUNT, MAX_TRIALS,
                          ApiConfigError, ApiError)
from .api_supervisor import CONTROLLER_FILE, LOG_FILE, read_controller, supervise, update_controller

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "DEFAULT_TOKEN_ENV", "TOKEN_HEADER", "check_bind", "is_loopback",
           "SweepRegistry", "create_app", "serve", "EXAMPLE_SPEC", "MAX_BODY_BYTES", "MAX_BOOTSTRAP", "MAX_BUDGETS",
           "MAX_RANGE_COUNT", "MAX_TRIALS", "ApiConfigError", "ApiError", "CONTROLLER_FILE", "LOG_FILE",
           "read_controller", "supervise", "update_controller"]

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "supervise":
        sys.exit(supervise(sys.argv[2]))
    sys.exit("usage: python -m orchestrator.api supervise SWEEP_DIR")
