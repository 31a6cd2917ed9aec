"""Credentials never leave the process in a log line or an error message.

:func:`redact` hides the password of a URL's ``user:password@`` part, the value of a
``password=`` (``passwd``, ``pwd``, ``secret``, ``*token``) setting and a ``Bearer`` token, in
any text: a database URL in an exception, a libpq-style connection string, a repr of keyword
arguments. The log formatter applies it to every line, so a message written without thinking
of it is safe too.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@  (the user is kept: it says who failed to connect, not how)
_URL_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*):[^@/\s]*@")
# password=x, password: x, 'password': 'x', PASSWORD="x y", ...token=x (query strings too)
_SETTING = re.compile(
    r"""(?P<head>\b(?:password|passwd|pwd|secret|[a-z_]*token)['"]?\s*[=:]\s*)"""
    r"""(?:'[^']*'|"[^"]*"|[^\s&;,'")}\]]+)""",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<head>\bbearer\s+)[^\s'\",]+", re.IGNORECASE)
# Every pattern above needs one of these: a text with none (most log fields: ids, names) is
# returned after one scan instead of three substitutions.
_ANY_TRIGGER = re.compile(r"://|pass|pwd|secret|token|bearer", re.IGNORECASE)


def redact(text: str) -> str:
    """``text`` with every credential it carries replaced by ``***``."""
    if _ANY_TRIGGER.search(text) is None:
        return text
    text = _URL_USERINFO.sub(rf"\g<head>:{MASK}@", text)
    text = _BEARER.sub(rf"\g<head>{MASK}", text)
    return _SETTING.sub(rf"\g<head>{MASK}", text)
