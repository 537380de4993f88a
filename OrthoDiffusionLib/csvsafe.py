"""CSV cells that a spreadsheet would run as formulas are escaped in every CSV the tool writes.

A cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is executed by Excel /
LibreOffice when the file is opened (``=HYPERLINK(...)`` from a manifest's study id, for example);
such a cell gets a leading ``'``, which spreadsheets show as text and ``unescape`` removes again.
A plain number (``-0.25``, ``+3``, ``-1e-05``) is data, not a formula, and stays as it is. Use
``writer`` / ``DictWriter`` instead of the ``csv`` module's; the first comment line of a file (the
disclaimer) is written directly and never escaped. Research use only, not for clinical decisions.
"""

from __future__ import annotations

import csv
import re

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.IGNORECASE)


def escape(value):
    """``value`` with a leading ``'`` when, as text, a spreadsheet would treat it as a formula.

    A carriage return inside a text cell becomes a line feed: the writers end lines with ``\n``,
    so the csv module would leave a lone ``\r`` unquoted and readers would split the row there.
    """
    if not isinstance(value, str):
        return value
    text = value.replace("\r\n", "\n").replace("\r", "\n")
    if not value.startswith(TRIGGERS) or _NUMBER.fullmatch(value):
        return text
    return "'" + text


def unescape(value):
    """The original text of a cell written by ``escape`` (reading back the tool's own CSVs)."""
    if isinstance(value, str) and value.startswith("'") and value[1:].startswith(TRIGGERS + ("\n",)):
        return value[1:]
    return value


class _Writer:
    def __init__(self, f, **kw):
        self._w = csv.writer(f, **kw)

    def writerow(self, row):
        return self._w.writerow([escape(v) for v in row])

    def writerows(self, rows):
        for row in rows:
            self.writerow(row)


def writer(f, **kw) -> _Writer:
    """``csv.writer`` whose every cell goes through ``escape``."""
    return _Writer(f, **kw)


class DictWriter(csv.DictWriter):
    """``csv.DictWriter`` whose every value (and the header) goes through ``escape``."""

    def writeheader(self):
        return self.writer.writerow([escape(f) for f in self.fieldnames])

    def _dict_to_list(self, rowdict):
        return [escape(v) for v in super()._dict_to_list(rowdict)]
