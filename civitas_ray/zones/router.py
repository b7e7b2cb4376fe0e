"""/api/v1/zones (being written)."""

from fastapi import APIRouter

router = APIRouter(prefix="/zones", tags=["zones"])
