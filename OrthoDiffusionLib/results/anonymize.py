"""Stable pseudonyms for study and patient ids in exported reports (``--anonymize``).

A pseudonym is ``<prefix>-`` + the first 12 hex digits of HMAC-SHA256(salt, id). The salt is 16
random bytes drawn per report unless the user gives one (``--anonymize-salt``), so by default the
pseudonyms are stable within a report but cannot be linked across reports or reversed by hashing
guessed ids; with the same salt, the same id gets the same pseudonym in every report. The salt is
never written into any output.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets


class Pseudonymizer:
    """Maps ids to pseudonyms; ``enabled=False`` is the identity (so callers need no branches)."""

    def __init__(self, enabled: bool = True, salt: str | bytes | None = None):
        self.enabled = bool(enabled)
        if isinstance(salt, str):
            salt = salt.encode("utf-8")
        self._salt = salt if salt else secrets.token_bytes(16)
        self._known: dict[str, str] = {}

    def __call__(self, value, prefix: str = "case") -> str:
        if value is None:
            return ""
        value = str(value)
        if not self.enabled or not value:
            return value
        if value not in self._known:
            digest = hmac.new(self._salt, value.encode("utf-8"), hashlib.sha256).hexdigest()[:12]
            self._known[value] = f"{prefix}-{digest}"
        return self._known[value]

    def register(self, values, prefix: str = "case") -> None:
        """Remember ids so :meth:`scrub` can replace them inside free text (error messages)."""
        for v in values:
            if v:
                self(v, prefix)

    def scrub(self, text) -> str:
        """Replace every registered id inside ``text`` (longest first, so 'S10' is not cut by 'S1')."""
        text = "" if text is None else str(text)
        if not self.enabled or not self._known:
            return text
        ids = sorted(self._known, key=len, reverse=True)
        pattern = re.compile("|".join(re.escape(i) for i in ids))
        return pattern.sub(lambda m: self._known[m.group(0)], text)
