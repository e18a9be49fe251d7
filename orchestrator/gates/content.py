"""Content safety of generations: personal data, a block list, and a pluggable classifier.

Detectors are patterns with a validity check where one exists: e-mail addresses, phone numbers
(North American and international notation), payment card numbers that pass the Luhn check, US
social security numbers and UK national insurance numbers.
"""

from __future__ import annotations

import re
from typing import Callable

from orchestrator import hooks
from orchestrator.errors import GateError
from orchestrator.gates.result import GateResult
from orchestrator.gates.spec import ContentGate

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
PHONE = re.compile(r"(?<!\d)(?:\+?1[\s.-]?)?(?:\(\d{3}\)|\d{3})[\s.-]\d{3}[\s.-]\d{4}(?!\d)|\+\d{1,3}(?:[\s.-]\d{2,4}){3,5}(?!\d)")
CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
US_SSN = re.compile(r"(?<!\d)(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?!\d)")
UK_NINO = re.compile(r"\b(?![DFIQUV])[A-CEGHJ-PR-TW-Z](?![DFIQUVO])[A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b")


def luhn_valid(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char)
        if index % 2 == 1:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def find_personal_data(text: str) -> list[dict]:
    findings = [{"kind": "email", "match": m.group()} for m in EMAIL.finditer(text)]
    findings += [{"kind": "phone", "match": m.group()} for m in PHONE.finditer(text)]
    for match in CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and luhn_valid(digits):
            findings.append({"kind": "payment_card", "match": match.group()})
    findings += [{"kind": "national_id", "match": m.group()} for m in (*US_SSN.finditer(text), *UK_NINO.finditer(text))]
    return findings


def find_blocked(text: str, block_list: list[str]) -> list[dict]:
    lowered = text.lower()
    return [{"kind": "block_list", "match": word} for word in block_list if re.search(rf"\b{re.escape(word.lower())}\b", lowered)]


def load_classifier(reference: str) -> Callable[[str], list]:
    """`module:function` marked @content_classifier, importable from the working directory; returns
    findings for a text. Checked again here: the run directory's recipe may have changed since validation."""
    try:
        return hooks.load_classifier(reference)
    except hooks.HookRefused as exc:
        raise GateError(f"gates.content.classifier: {exc}") from None


def content_gate(spec: ContentGate, completions: list[dict]) -> GateResult:
    """`completions`: {"source", "completion"} pairs already generated (`extraction.probe_generations`);
    the classifier sees each completion's text alone."""
    classifier = load_classifier(spec.classifier) if spec.classifier else None
    findings = []
    for item in completions:
        text = item["completion"]
        found = find_personal_data(text) + find_blocked(text, spec.block_list)
        if classifier:
            found += [{"kind": "classifier", "match": str(f)} for f in classifier(text)]
        findings += [{**f, "source": item["source"], "completion": text[:200]} for f in found]
    kinds = sorted({f["kind"] for f in findings})
    status = "fail" if len(findings) > spec.max_findings else "pass"
    probes = f"{len(completions)} generations (training prefixes, unconditioned samples, prompts)"
    summary = f"{len(findings)} finding(s) ({', '.join(kinds)}) in {probes}" if findings else f"no personal data or blocked terms in {probes}"
    return GateResult("content", status, float(len(findings)), float(spec.max_findings), summary,
                      {"findings": findings[:20], "completions": completions[:10]})
