from __future__ import annotations

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "order"
    http_port: int = 8001
    database_url: str = "postgresql://postgres@127.0.0.1:5432/order"
    # The event-flow view reads traces from Jaeger's query API and links to its UI.
    jaeger_query_url: str = "http://127.0.0.1:16686"
    jaeger_ui_url: str = "http://127.0.0.1:16686"
