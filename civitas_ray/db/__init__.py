"""Database layer: declarative base, engines, tenant-scoped sessions."""
