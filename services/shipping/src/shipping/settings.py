from __future__ import annotations

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "shipping"
    http_port: int = 8003
    database_url: str = "postgresql://postgres@127.0.0.1:5432/shipping"
    dispatch_delay_seconds: float = 10.0
    dispatch_poll_interval_seconds: float = 0.5
