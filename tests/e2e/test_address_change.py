"""Address changes through all three services, over HTTP: a burst ends as one change, and
whichever wins the race with dispatch, the order and the shipment agree on where the parcel
went."""

from __future__ import annotations

import httpx

from tests.e2e.conftest import Suite, new_sku
from tests.e2e.flow import ADDRESS, order_status_becomes, place, restock, shipment_becomes

BURST = 100


def address(n: int) -> dict[str, str]:
    return ADDRESS | {"line1": f"{n} Burst Av"}


async def test_a_burst_of_address_changes_ends_with_order_and_shipment_agreeing_where_it_went(
    suite: Suite, http: httpx.AsyncClient
) -> None:
    sku = new_sku()
    await restock(http, suite.inventory, sku, 5)
    accepted = await place(http, suite.order, [{"sku": sku, "quantity": 1}])
    order_id = accepted["order_id"]
    await order_status_becomes(http, suite.order, order_id, {"CONFIRMED"})
    answers = []
    for n in range(1, BURST + 1):
        response = await http.put(
            f"{suite.order}/orders/{order_id}/shipping-address", json=address(n)
        )
        answers.append(response.status_code)
    # 202 until the order is SHIPPED (the dispatcher may win mid-burst), then 409.
    assert answers == sorted(answers), answers
    assert set(answers) <= {202, 409}, answers

    order = await order_status_becomes(http, suite.order, order_id, {"SHIPPED"})
    shipment = await shipment_becomes(http, suite.shipping, order_id, {"DISPATCHED"})
    assert order["shipping_address"] == shipment["shipping_address"]
    # Where it went: the address it was placed with (dispatch won) or the last one of the
    # burst (debounced: never one in between).
    assert shipment["shipping_address"] in (ADDRESS, address(answers.count(202)))

    late = await http.put(f"{suite.order}/orders/{order_id}/shipping-address", json=address(0))
    assert late.status_code == 409, late.text
