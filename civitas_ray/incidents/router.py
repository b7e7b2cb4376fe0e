"""/api/v1/incidents (being written)."""

from fastapi import APIRouter

router = APIRouter(prefix="/incidents", tags=["incidents"])
