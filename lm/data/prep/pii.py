"""PII stage: e-mail addresses, IP addresses and phone numbers -> placeholders.

The patterns are deliberately strict so that ordinary numbers, dates, times,
prices and version strings survive: a phone number needs a "+" country code,
a parenthesized area code, or the 3-3-4 digit grouping; an IPv4 address needs
four dot-separated octets <= 255 (so a bare four-part version "1.2.3.4" counts
as an address; "v1.2.3.4" does not); an IPv6 candidate (full, "::"-compressed,
with an embedded IPv4 or a "%zone") must parse as `ipaddress.IPv6Address` and
contain a digit, so "a::b", "std::vector" and times like "12:30:45" survive.
"""

import collections
import ipaddress
import re
from typing import Tuple

PLACEHOLDERS = {"email": "<EMAIL>", "ip": "<IP_ADDRESS>", "phone": "<PHONE>"}

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = rf"{_OCTET}(?:\.{_OCTET}){{3}}"
_IPV6 = rf"(?:[0-9A-Fa-f]{{0,4}}:){{2,7}}(?:{_IPV4}|[0-9A-Fa-f]{{1,4}})?(?:%\w+)?"
_PATTERNS = (
    ("email", re.compile(
        r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"
        r"\b")),
    ("ip", re.compile(
        rf"(?<![\w.]){_IPV4}(?![\w.]*\d)"
        rf"|(?P<v6>(?<![\w:.%]){_IPV6}(?![\w:]))")),
    ("phone", re.compile(
        r"(?<![\w+])(?:"
        r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)|\d{1,4})(?:[ .-]?\d{2,4}){2,4}"
        r"|\(\d{3}\) ?\d{3}[ .-]\d{4}"
        r"|\d{3}[ .-]\d{3}[ .-]\d{4}"
        r")(?![\w-])")),
)
# Cheap checks that skip a pattern's (slow) scan when it cannot match.
_MAY_MATCH = {
    "email": re.compile("@"),
    "ip": re.compile(r"\d\.\d|:"),
    "phone": re.compile(r"\d\d"),
}


def _is_pii(kind: str, match: re.Match) -> bool:
  """IPv6 candidates must really be addresses; the other patterns are exact."""
  if kind != "ip" or match.group("v6") is None:
    return True
  candidate = match.group("v6")
  if not any(c.isdigit() for c in candidate):
    return False
  try:
    ipaddress.IPv6Address(candidate)
  except ValueError:
    return False
  return True


def scrub_pii(text: str) -> Tuple[str, collections.Counter]:
  """Returns the text with PII replaced, and how many of each kind."""
  counts = collections.Counter()
  for kind, pattern in _PATTERNS:
    if not _MAY_MATCH[kind].search(text):
      continue

    def replace(match, kind=kind):
      if not _is_pii(kind, match):
        return match.group(0)
      counts[kind] += 1
      return PLACEHOLDERS[kind]

    text = pattern.sub(replace, text)
  return text, counts
