"""Where things are: Redis, the store, the ports served, the workers, the operator.

A group of fields of :class:`config.settings.Settings`.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from config.urls import check_redis_url, check_store_url


class PlacesSettings(BaseModel):
    redis_url: str = "redis://127.0.0.1:6379/0"
    store_url: str = "sqlite:///creditgate.db"
    host: str = "0.0.0.0"
    traffic_port: int = Field(8080, ge=0, le=65535)
    admin_port: int = Field(8081, ge=0, le=65535)
    workers: int = Field(0, ge=0, description="traffic worker processes; 0 = CPU count")
    operator_token: str | None = Field(None, min_length=16)
    catalog_path: str | None = None

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        return check_redis_url(value)

    @field_validator("store_url")
    @classmethod
    def _store_url(cls, value: str) -> str:
        return check_store_url(value)

    @property
    def redis_cluster(self) -> bool:
        return self.redis_url.startswith("redis+cluster://")
