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
    stuck_order_after_seconds: float = Field(
        600.0,
        gt=0,
        description="an order unchanged and not yet SHIPPED, REJECTED or CANCELLED for this long"
        " counts as stuck (`orders_stuck` gauge, a warning log line, `GET /admin/stuck-orders`)",
    )
    stuck_order_check_seconds: float = Field(
        30.0, gt=0, description="how often stuck orders are looked for"
    )
