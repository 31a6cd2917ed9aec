from __future__ import annotations

from pydantic import Field, model_validator

from shared.service.settings import ServiceSettings


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

    address_change_rate_window_seconds: float = Field(
        10.0,
        gt=0,
        description="the storm guard counts each order's address changes over this sliding"
        " window, in memory, per instance (two instances each count what they receive)",
    )
    address_change_storm_rate: float = Field(
        1.0,
        ge=0,
        description="address changes per order per second, averaged over the window, past which"
        " the storm guard logs a warning with the order and correlation ids (once per storm)"
        " and counts it in `aggregate_change_storms_total` (0: never)",
    )
    address_change_rate_limit: float = Field(
        0.0,
        ge=0,
        description="address changes per order per second accepted at most, averaged over the"
        " window (a burst of this times the window goes through at once); the rest get 429"
        " with `Retry-After`. 0: no limit",
    )
    address_change_rate_tracked_orders: int = Field(
        10_000,
        ge=1,
        description="orders whose recent address changes the storm guard remembers (the one"
        " changed longest ago is forgotten first): bounds its memory",
    )

    @model_validator(mode="after")
    def _the_limit_admits_a_change(self) -> Settings:
        limit = self.address_change_rate_limit * self.address_change_rate_window_seconds
        if self.address_change_rate_limit and limit + 1e-9 < 1:
            raise ValueError(
                "address_change_rate_limit times address_change_rate_window_seconds must be at"
                " least 1 (one change per window), or the limit 0 (off)"
            )
        return self
