"""PII scrubbing (issue 8 item 12): every form README claims is replaced; other numbers survive."""

import pytest

from lm.data.prep.pii import scrub_pii

PII = [
    ("email", "jane.doe+news@example.co.uk"),
    ("email", "ADMIN@mail.example.org"),
    ("ip", "192.168.0.12"),
    ("ip", "31.13.24.35"),  # no run of 3 digits: the old fast path skipped it
    ("ip", "8.8.8.8"),
    ("ip", "2001:0db8:85a3:0000:0000:8a2e:0370:7334"),
    ("ip", "2001:db8::1"),
    ("ip", "::1"),
    ("ip", "fe80::1"),
    ("ip", "fe80::1%eth0"),
    ("ip", "2001:db8:0:0:1::"),
    ("ip", "::ffff:192.0.2.128"),
    ("ip", "64:ff9b::192.0.2.33"),
    ("phone", "+1 415 555 0199"),
    ("phone", "+44 20 7946 0958"),
    ("phone", "+49 (30) 1234 5678"),
    ("phone", "(212) 555-0100"),
    ("phone", "650.555.0123"),
    ("phone", "650-555-0123"),
]


@pytest.mark.parametrize("kind,value", PII)
def test_pii_form_is_replaced_in_a_sentence(kind, value):
  placeholder = {"email": "<EMAIL>", "ip": "<IP_ADDRESS>", "phone": "<PHONE>"}[kind]
  text = f"Contact: {value}, said the note (see {value})."
  scrubbed, counts = scrub_pii(text)
  assert scrubbed == f"Contact: {placeholder}, said the note (see {placeholder})."
  assert dict(+counts) == {kind: 2}


@pytest.mark.parametrize("text", [
    "On 2023-01-15 at 12:30:45 we sold 1,234,567 units at $12.50.",
    "3.14159 per cent, up 15%; version 1.2.3 and v2.0.1.4, ISBN 978-3-16-148410-0.",
    "12/05/2021, year 1999, 10.0.0.256 and room 555; 31.13.24 is a date.",
    "C++: std::vector, a::b, Foo::Bar::baz and the ratio 3:2:1 or 10:30.",
    "Ports 8080:80, the score 2:1, ISO time 2023-01-15T12:30:00Z, MAC-like de:ad:be:ef.",
])
def test_dates_times_and_other_numbers_survive(text):
  scrubbed, counts = scrub_pii(text)
  assert scrubbed == text and sum(counts.values()) == 0
