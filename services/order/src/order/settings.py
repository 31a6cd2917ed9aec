from __future__ import annotations

from pydantic import Field

from shared.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "order"
    http_port: int = 8001
    database_url: str = "postgresql://postgres@127.0.0.1:5432/order"
    jaeger_query_url: str = Field(
        "http://127.0.0.1:16686", description="where the event-flow view queries Jaeger"
    )
    jaeger_ui_url: str = Field(
        "http://127.0.0.1:16686",
        description="where the event-flow view's trace links point (an address for a browser)",
    )
