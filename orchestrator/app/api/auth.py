"""Who may talk to the API: the loopback rule for binds and the token check of each request."""
from __future__ import annotations

import ipaddress
import secrets
from typing import Optional

from starlette.requests import Request

from .schemas import ApiConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_TOKEN_ENV = "SCALESWEEP_API_TOKEN"
TOKEN_HEADER = "X-Scalesweep-Token"


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine.

    >>> is_loopback("127.0.0.1"), is_loopback("[::1]"), is_loopback("0.0.0.0"), is_loopback("example.org")
    (True, True, False, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, token: Optional[str]) -> None:
    """Refuse a non-loopback bind without a token (raises ApiConfigError)."""
    if not is_loopback(host) and not token:
        raise ApiConfigError(
            f"binding to {host} exposes the API beyond this machine; set a token in the environment "
            f"variable named by --token-env (default {DEFAULT_TOKEN_ENV}) or bind to {DEFAULT_HOST}"
        )


def token_ok(request: Request, token: bytes) -> bool:
    """Whether the request carries `token` (Authorization: Bearer, or the X-Scalesweep-Token header)."""
    given = None
    auth = request.headers.get("authorization")
    if auth is not None:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
    if given is None:
        given = request.headers.get(TOKEN_HEADER)
    if given is None:
        return False
    # Starlette decodes header bytes as latin-1; re-encoding gives the bytes the client sent.
    return secrets.compare_digest(given.encode("latin-1", "replace"), token)
