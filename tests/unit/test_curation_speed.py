"""Every pattern data curation runs over a document costs time linear in the document's length: the
personal-data detector (`pii`, the content gate's too), the quality rules, and the words and paragraphs
of contamination. A 200 KB document of `a%a%...` once took 30 s in the e-mail pattern alone (each `%a`
restarted the local part and read to the end), and a run of one character just short of the limit was
read once from each of its characters.

Each input below is a long run of what one pattern's repetition accepts. It is timed against plain text
of the same length, and at four times its length: a pattern that restarts is tens of times slower than
on plain text at this length, and sixteen times slower at four times the length, where a linear one is
four. Times are the best of a few tries in this thread's CPU time, what other processes on a shared
machine disturb least.
"""

from __future__ import annotations

import sysconfig
import time
from pathlib import Path
from typing import Callable

import pytest

from orchestrator.data import ngrams, pii
from orchestrator.data.curate import quality_failure
from orchestrator.data.spec import QualitySpec

LENGTH = 20_000
TRIES = 3
RUN = 1_000
QUALITY = QualitySpec(max_duplicate_line_fraction=1.0, max_char_run=RUN)
"""No duplicate-line verdict to stop early: every document reaches the character-run rule."""
PLAIN = Path(sysconfig.get_paths()["stdlib"], "argparse.py").read_text()

PATHOLOGICAL = {
    "e-mail local part with %": "a%",
    "e-mail local parts without a domain": "a" * 999 + "@",
    "e-mail at-signs": "a@",
    "e-mail dotted local part or domain": "a.",
    "e-mail domain labels": "a-",
    "card digits with spaces": "1 ",
    "card digits with dashes": "1-",
    "digits": "1",
    "IPv4 dots": "1.",
    "IPv6 colons": ":",
    "IPv6 groups": "a:",
    "IPv6 groups, hexadecimal": "f0:",
    "phone country codes": "+1 ",
    "phone area codes": "(1) ",
    "national insurance letters and digits": "AB 1",
    "character run just short of the limit": "a" * RUN + "b",
    "blank lines with spaces": "\n ",
    "spaces after a line": "\n" + " " * 999 + "x",
}


def repeated(unit: str, length: int) -> str:
    return (unit * (length // len(unit) + 1))[:length]


def paragraphs(tmp_path: Path) -> Callable[[str], object]:
    path = tmp_path / "evaluation.txt"

    def read(text: str) -> object:
        path.write_text(text)
        return ngrams.read_eval_file(path)

    return read


def best_time(check: Callable[[str], object], text: str) -> float:
    times = []
    for _ in range(TRIES):
        start = time.thread_time()
        check(text)
        times.append(time.thread_time() - start)
    return max(min(times), 1e-4)  # below the clock's useful resolution, any two inputs are alike


@pytest.mark.parametrize("unit", PATHOLOGICAL.values(), ids=PATHOLOGICAL.keys())
def test_each_pattern_is_linear_on_input_built_to_make_it_restart(unit, tmp_path):
    checks = {"personal data": pii.scan, "quality rules": lambda text: quality_failure(text, QUALITY), "words": ngrams.words,
              "paragraphs": paragraphs(tmp_path)}
    for name, check in checks.items():
        plain = best_time(check, repeated(PLAIN, LENGTH))
        once, longer = best_time(check, repeated(unit, LENGTH)), best_time(check, repeated(unit, 4 * LENGTH))
        assert once < 20 * plain, f"{name}: {once * 1e3:.1f} ms against {plain * 1e3:.1f} ms on plain text of the same length"
        assert longer < 8 * once, f"{name}: {longer * 1e3:.1f} ms at four times the length, {once * 1e3:.1f} ms at once"


def test_the_linear_e_mail_pattern_finds_what_it_found():
    """The runs the e-mail pattern consumes to skip are not findings; addresses inside or after them still are."""
    text = "a%b%c%d no address; x%y@example.com; _%jane@example.org; é%z@example.net; a%b@c%d@example.com."
    assert [f.match for f in pii.find(text)] == ["x%y@example.com", "jane@example.org", "z@example.net", "c%d@example.com"]
    assert pii.redact("100%a%b and 50%c")[0] == "100%a%b and 50%c"
