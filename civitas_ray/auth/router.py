"""/api/v1/auth: sign in (OAuth2 password form), refresh, logout, me, password."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.security import OAuth2PasswordRequestForm

from civitas_ray.audit.service import Actor
from civitas_ray.auth import service
from civitas_ray.auth.deps import AuthDep, client_address
from civitas_ray.auth.schemas import LogoutRequest, Me, PasswordChange, RefreshRequest, TokenPair
from civitas_ray.auth.service import IssuedTokens
from civitas_ray.errors import Forbidden
from civitas_ray.logging import request_id_var

router = APIRouter(prefix="/auth", tags=["auth"])


def _anonymous(request: Request) -> Actor:
    return Actor(type="anonymous", request_id=request_id_var.get(),
                 address=client_address(request))


def _pair(t: IssuedTokens) -> TokenPair:
    return TokenPair(access_token=t.access_token, expires_in=t.access_expires_in,
                     refresh_token=t.refresh_token, refresh_expires_in=t.refresh_expires_in)


@router.post("/token", response_model=TokenPair, summary="Sign in with e-mail and password",
             description="OAuth2 password flow: `username` is the e-mail address. Failed "
                         "sign-ins are rate-limited per account and per address, and audited.",
             openapi_extra={"x-permission": "public"})
async def token(request: Request,
                form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> TokenPair:
    tokens = await service.login(email=form.username, password=form.password,
                                 actor=_anonymous(request),
                                 user_agent=request.headers.get("user-agent"))
    return _pair(tokens)


@router.post("/refresh", response_model=TokenPair,
             summary="Exchange a refresh token for a new pair (rotation)",
             description="Each refresh token works once. Presenting one that was already "
                         "rotated revokes every token of that session.",
             openapi_extra={"x-permission": "public"})
async def refresh(request: Request, body: RefreshRequest) -> TokenPair:
    tokens = await service.refresh(token=body.refresh_token, actor=_anonymous(request),
                                   user_agent=request.headers.get("user-agent"))
    return _pair(tokens)


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT,
             summary="Revoke the session's refresh token (or every session)",
             openapi_extra={"x-permission": "authenticated"})
async def logout(ctx: AuthDep, body: LogoutRequest) -> Response:
    if ctx.principal.kind != "user":
        raise Forbidden("Only user sessions can log out")
    await service.logout(session=ctx.session, user_id=ctx.principal.id,
                         tenant_id=ctx.principal.tenant_id, token=body.refresh_token,
                         everywhere=body.everywhere, actor=ctx.actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me", response_model=Me, summary="Who the caller is and what it may do",
            openapi_extra={"x-permission": "authenticated"})
async def me(ctx: AuthDep) -> Me:
    p = ctx.principal
    return Me(kind=p.kind, id=p.id, tenant_id=p.tenant_id, label=p.label, role=p.role,
              permissions=sorted(str(x) for x in p.permissions),
              tenant_slug=await service.tenant_slug(ctx.session, p.tenant_id))


@router.post("/password", status_code=status.HTTP_204_NO_CONTENT,
             summary="Change one's own password (signs out every session)",
             openapi_extra={"x-permission": "authenticated"})
async def change_password(ctx: AuthDep, body: PasswordChange) -> Response:
    if ctx.principal.kind != "user":
        raise Forbidden("Only users have passwords")
    await service.change_password(session=ctx.session, user_id=ctx.principal.id,
                                  current=body.current_password, new=body.new_password,
                                  actor=ctx.actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
