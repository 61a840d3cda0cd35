"""PII stage: e-mail addresses, IP addresses and phone numbers -> placeholders.

The patterns are deliberately strict so that ordinary numbers, dates, times,
prices and version strings survive: a phone number needs a "+" country code,
a parenthesized area code, or the 3-3-4 digit grouping; an IPv4 address needs
four dot-separated octets <= 255.
"""

import collections
import re
from typing import Tuple

PLACEHOLDERS = {"email": "<EMAIL>", "ip": "<IP_ADDRESS>", "phone": "<PHONE>"}

_DIGITS = re.compile(r"\d{3}")  # Every IP address and phone number has 3.
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_PATTERNS = (
    ("email", re.compile(
        r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
        r"\b")),
    ("ip", re.compile(
        rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w.]*\d)"
        r"|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}(?![\w:])")),
    ("phone", re.compile(
        r"(?<![\w+])(?:"
        r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)|\d{1,4})(?:[ .-]?\d{2,4}){2,4}"
        r"|\(\d{3}\) ?\d{3}[ .-]\d{4}"
        r"|\d{3}[ .-]\d{3}[ .-]\d{4}"
        r")(?![\w-])")),
)


def scrub_pii(text: str) -> Tuple[str, collections.Counter]:
  """Returns the text with PII replaced, and how many of each kind."""
  counts = collections.Counter()
  has_digits = _DIGITS.search(text) is not None
  for kind, pattern in _PATTERNS:
    # Cheap skips for the common case: the patterns are slow to scan.
    if (kind == "email" and "@" not in text) or (kind != "email" and
                                                 not has_digits):
      continue
    text, n = pattern.subn(PLACEHOLDERS[kind], text)
    counts[kind] += n
  return text, counts
