"""What every route shares: the process's state (built by the app's lifespan) and the caller's
API key."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from conduit_workers.gateway.auth import KeyChecker
from conduit_workers.gateway.idempotency import Idempotency, SdkRetries
from conduit_workers.gateway.producer import TaskSender
from conduit_workers.gateway.service import Gateway
from conduit_workers.history.history_gateway import ApiKey, GatewayHistory


@dataclass
class State:
    gateway: Gateway
    keys: KeyChecker
    history: GatewayHistory
    tasks: TaskSender
    idempotency: Idempotency
    sdk_retries: SdkRetries | None = None  # None: the SDKs' retries call again


def state(request: Request) -> State:
    st: State = request.app.state.conduit
    return st


# Documents the scheme in the OpenAPI document (the SDK's api_key); the header is read below, so
# that a missing and a malformed one each get their own message.
_bearer = HTTPBearer(auto_error=False, description="An API key from `conduit keys create`.")


async def api_key(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> ApiKey:
    """The caller's key (401 without a valid one)."""
    return await state(request).keys.check(request.headers.get("authorization"))


Key = Annotated[ApiKey, Depends(api_key)]
