"""Text refuses control characters with a message that names where."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from shared.contracts.catalog import Address, OrderLine
from shared.service.text import Text


class Named(BaseModel):
    name: Text


@pytest.mark.parametrize("char", ["\x00", "\x01", "\t", "\n", "\r", "\x1b", "\x7f", "\x85"])
def test_a_control_character_is_refused(char: str) -> None:
    with pytest.raises(ValidationError) as raised:
        Named(name=f"ab{char}c")
    error = raised.value.errors()[0]
    assert error["type"] == "control_character"
    assert error["msg"] == (
        f"must not contain control characters (found U+{ord(char):04X} at position 2)"
    )


@pytest.mark.parametrize("text", ["", "Rue de l'Église 5", "東京都", "a b-c_d.e/f", "😀"])
def test_printable_text_of_any_script_is_kept(text: str) -> None:
    assert Named(name=text).name == text


ADDRESS = {"line1": "1 Main St", "city": "Springfield", "postal_code": "12345", "country": "US"}


@pytest.mark.parametrize("field", ["line1", "city", "postal_code"])  # country: ^[A-Z]{2}$
def test_every_address_field_refuses_a_nul(field: str) -> None:
    with pytest.raises(ValidationError, match="control characters"):
        Address.model_validate(ADDRESS | {field: "U\x00S"})


def test_a_sku_refuses_a_nul() -> None:
    with pytest.raises(ValidationError, match="control characters"):
        OrderLine(sku="SKU\x00-1", quantity=1)
