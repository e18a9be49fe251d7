"""Prepared data in words: what each source gave and what curation took out, from its manifest."""

from __future__ import annotations

from orchestrator.shared.data.prepared import Manifest, PreparedData

REMOVED = ("exact_duplicates", "near_duplicates", "decontaminated")
PII_KINDS = ("email", "phone", "card", "national_id", "ip")


def curation_line(counts: dict) -> str:
    """`read 75, kept 74: 1 exact duplicates, ...; PII redacted in 10 documents (6 email, ...)`."""
    removed = [f"{counts[k]} {k.replace('_', ' ')}" for k in REMOVED if counts.get(k)]
    removed += [f"{v} {k.removeprefix('quality_').replace('_', ' ')}" for k, v in sorted(counts.items()) if k.startswith("quality_") and v]
    pii = [f"{counts[f'pii_{k}']} {k.replace('_', ' ')}" for k in PII_KINDS if counts.get(f"pii_{k}")]
    line = f"read {counts.get('read', 0):,}, kept {counts.get('kept', 0):,}" + (f": dropped {', '.join(removed)}" if removed else "")
    return line + (f"; PII redacted in {counts.get('pii_documents', 0):,} documents ({', '.join(pii)})" if pii else "")


def source_lines(manifest: Manifest) -> list[str]:
    """One line per source: its weight, documents, tokens, and curation counts."""
    lines = []
    for source in manifest.sources:
        docs = source.documents
        lines.append(f"{source.name} (weight {source.weight:g}): {docs['train']:,} + {docs['val']:,} documents, "
                     f"{source.train_tokens:,} + {source.val_tokens:,} tokens (train + val); {curation_line(source.curation)}")
    return lines


def describe_preparation(data: PreparedData) -> str:
    lines = [f"prepared data  {data.dir}",
             f"tokens         {data.train_tokens:,} training, {data.val_tokens:,} validation; vocabulary {data.vocab_size:,}"]
    lines += [f"source         {line}" for line in source_lines(data.manifest)]
    return "\n".join(lines)
