"""The text every HTTP endpoint accepts: a string without control characters.

PostgreSQL refuses a NUL in ``text`` (after validation passed, so the request used to answer
500), and the other control characters (C0, DEL, C1: tabs and newlines included) have no
place in an identifier, a SKU or an address line either; they would also forge log lines and
break the CSV a user exports. Every text field of every request model, path, query and
header uses :data:`Text`, so each one answers 422 with a message naming the field.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _no_control_characters(value: str) -> str:
    if found := _CONTROL.search(value):
        raise PydanticCustomError(
            "control_character",
            "must not contain control characters (found U+{code} at position {position})",
            {"code": f"{ord(found.group()):04X}", "position": found.start()},
        )
    return value


Text = Annotated[str, AfterValidator(_no_control_characters)]
"""``str`` refused (422) when it holds a control character; add length limits with ``Field``."""
