"""What the dashboard needs beyond the operator API: what the caller's token may do. Every answer here is
also plain API (documented, tested through HTTP), so scripts may use it too."""

from __future__ import annotations

from pydantic import Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from .context import Op, api
from .schemas import _Out

__all__ = ["view_ops"]


class AuthInfo(_Out):
    """What the token this request carries may do."""

    auth_enabled: bool = Field(description="false: no tokens are configured (loopback only)")
    can_write: bool = Field(description="false for a read-only token: only GET requests are allowed")


async def auth_me(request: Request) -> Response:
    ctx = api(request)
    readonly = bool(request.scope.get("chronos.readonly", False))
    info = AuthInfo(auth_enabled=ctx.settings.auth_enabled, can_write=not readonly)
    return JSONResponse(info.model_dump(mode="json"))


def view_ops() -> list[Op]:
    return [
        Op("GET", "/auth/me", auth_me, "What the caller's token may do", 200, AuthInfo, "auth"),
    ]
