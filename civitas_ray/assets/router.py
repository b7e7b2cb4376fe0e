"""/api/v1/assets (being written)."""

from fastapi import APIRouter

router = APIRouter(prefix="/assets", tags=["assets"])
