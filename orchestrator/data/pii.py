"""The one personal-data detector: data curation redacts what it finds, the release's content gate counts it.

Regular expressions in the spirit of datatrove's `PIIFormatter` (which covers e-mail and IPv4 addresses only),
extended to payment cards, national id numbers, phone numbers and IPv6; each kind has the checks a pattern cannot
make (a card's issuer, length and checksum; an address that routes on the internet). Both users share it so that
what curation lets through and what the gate fails a model for cannot disagree: a gate with looser rules failed an
under-trained model whose "0 0 0 0 ..." passed a Luhn check that curation never counted as a card. Like any pattern
matcher it misses what it was not written for (names, postal addresses). Every pattern costs time linear in the text's
length, whatever the text (`tests/unit/test_curation_speed.py`): a corpus is not trusted input.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

PLACEHOLDERS = {"email": "<EMAIL>", "card": "<CARD_NUMBER>", "national_id": "<NATIONAL_ID>", "phone": "<PHONE>", "ip": "<IP_ADDRESS>"}
KINDS = tuple(PLACEHOLDERS)

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
PATTERNS = {
    # An address's local part starts at its run's first letter or digit that no word character precedes (inside a
    # run, one after a "%"); a run with a "%" and no address is consumed whole (`_is_personal` lets it be) so that
    # the search does not restart at each of its "%x": `a%a%a%...` cost the square of its length.
    "email": re.compile(r"(?<![\w.+-])[A-Za-z0-9](?:[A-Za-z0-9._%+-]*+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}\b|[A-Za-z0-9._+-]*+%[A-Za-z0-9._%+-]*+)"),
    # 13 to 19 digits, optionally grouped by spaces or dashes; a card only with an issuer's prefix and a valid Luhn digit
    "card": re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"),
    # US social security numbers (never area 000, 666 or 9xx, group 00, serial 0000) and UK national insurance numbers
    "national_id": re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b|\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"),
    # international (+CC ...) or North American ((415) 555-2671, 415-555-2671) numbers
    "phone": re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}|\(\d{3}\) ?\d{3}[ .-]\d{4}|\d{3}[.-]\d{3}[.-]\d{4})(?![\w-])"),
    "ip": re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\d.])|(?<![\w:])(?:[0-9A-Fa-f]{{1,4}}:){{7}}[0-9A-Fa-f]{{1,4}}(?![\w:])"
                     r"|(?<![\w:])(?=[0-9A-Fa-f:]*[0-9A-Fa-f]{3})(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:){0,5}[0-9A-Fa-f]{1,4}(?![\w:])"),
}
"""Applied in this order, each on what the previous ones left (a card number is not also a phone number)."""

CARD_PREFIX = re.compile(r"4\d{12}(?:\d{3}){0,2}|5[1-5]\d{14}|2(?:2[2-9]|[3-6]\d|7[01])\d{13}|2720\d{12}|3[47]\d{13}|6(?:011|5\d\d)\d{12,15}")
"""Lengths and issuer prefixes of Visa, Mastercard, American Express and Discover: digit runs that
pass Luhn by chance (one in ten does) and are constants, not cards, mostly fail this."""
VERSION_CONTEXT = re.compile(r"(?i)(?:version|release|rev|section|rfc|\bv)[\s:=(\"']*$")
"""Before a dotted quad, a version or section number, not an address."""


@dataclass(frozen=True)
class Finding:
    kind: str
    match: str


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, d in enumerate(int(c) for c in reversed(digits)):
        total += d if i % 2 == 0 else (d * 2 - 9 if d > 4 else d * 2)
    return total % 10 == 0


def degenerate(digits: str) -> bool:
    """A digit run a model emits when it repeats itself or counts (4444 4444 4444 4448 has Visa's prefix and
    passes Luhn): one block of at most four digits repeated, or every digit one more (or less) than the last.
    A real card number, test numbers like 4111 1111 1111 1111 included, is neither."""
    periodic = any(digits == (digits[:period] * len(digits))[: len(digits)] for period in range(1, 5))
    steps = {(int(b) - int(a)) % 10 for a, b in zip(digits, digits[1:])}
    return periodic or steps in ({1}, {9})


def _is_personal(kind: str, match: re.Match) -> bool:
    found = match.group()
    if kind == "email":
        return "@" in found
    if kind == "card":
        digits = re.sub(r"\D", "", found)
        return bool(CARD_PREFIX.fullmatch(digits)) and luhn_valid(digits) and not degenerate(digits)
    if kind == "ip":
        import ipaddress

        try:
            address = ipaddress.ip_address(found)
        except ValueError:
            return False
        return address.is_global and not VERSION_CONTEXT.search(match.string[max(0, match.start() - 24) : match.start()])
    return True


def scan(text: str) -> tuple[str, list[Finding]]:
    """The text with each piece of personal data replaced by its kind's placeholder, and what was replaced, in order."""
    findings: list[Finding] = []
    for kind, pattern in PATTERNS.items():
        def replace(match: re.Match, kind: str = kind) -> str:
            if not _is_personal(kind, match):
                return match.group()
            findings.append(Finding(kind, match.group()))
            return PLACEHOLDERS[kind]

        text = pattern.sub(replace, text)
    return text, findings


def redact(text: str) -> tuple[str, Counter]:
    """The text with personal data replaced by placeholders, and how many of each kind were replaced."""
    text, findings = scan(text)
    return text, Counter(f.kind for f in findings)


def find(text: str) -> list[Finding]:
    return scan(text)[1]
