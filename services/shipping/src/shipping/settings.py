from __future__ import annotations

from pydantic import Field

from shared.service.settings import ServiceSettings


class Settings(ServiceSettings):
    service_name: str = "shipping"
    http_port: int = 8003
    database_url: str = "postgresql://postgres@127.0.0.1:5432/shipping"
    dispatch_delay_seconds: float = Field(10.0, description="time from scheduling to dispatch")
    dispatch_poll_interval_seconds: float = Field(
        0.5,
        description="how often the dispatcher looks for due shipments it was not told of (it"
        " rings its own alarm for those it schedules)",
    )
