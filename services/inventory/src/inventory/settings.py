from __future__ import annotations

from shared.service.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "inventory"
    http_port: int = 8002
    database_url: str = "postgresql://postgres@127.0.0.1:5432/inventory"
