from __future__ import annotations

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "order"
    http_port: int = 8001
    database_url: str = "postgresql://postgres@127.0.0.1:5432/order"
