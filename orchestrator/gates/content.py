"""Content safety of generations: personal data, a block list, and a pluggable classifier.

Personal data is what data curation would have redacted (`orchestrator.data.pii`, one detector for
both): e-mail addresses, phone numbers, payment cards (issuer prefix, length and Luhn; not a digit
repeated or counted), US social security and UK national insurance numbers, public IP addresses.
"""

from __future__ import annotations

import re
from typing import Callable

from orchestrator import hooks
from orchestrator.data import pii
from orchestrator.errors import GateError
from orchestrator.gates.result import GateResult
from orchestrator.gates.spec import ContentGate


def find_personal_data(text: str) -> list[dict]:
    return [{"kind": f.kind, "match": f.match} for f in pii.find(text)]


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
