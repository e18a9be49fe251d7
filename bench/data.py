"""Data preparation at scale: throughput per worker against the tokenizer's own limit, scaling from 1
to 2 workers, peak memory for a corpus and one four times larger, and for the same text in book-length
documents.

    python bench/data.py [--size-mb 200] [--out bench/results/data.json]
    python bench/data.py --smoke --out /tmp/data.json     # corpora of 1 and 4 MiB (the test suite's)

Two synthetic corpora (JSON Lines of documents of Zipf-distributed words, S and 4S bytes) are
prepared with `orch prepare`'s code (`prepare_data`) in a fresh process each, without curation (the
pipeline itself: read, chunk (8 MiB), tokenize, write shards), with 1 and 2 workers; a last run measures
curation's cost at S. In the same run, the tokenizer that preparation trained encodes the same text
with its own `encode_batch` on one thread: the rate a worker cannot beat. Peak memory is the
largest sum of resident memory over the preparing process and its workers, sampled every 50 ms.
Goals (issue 18): at least 0.8 of the `encode_batch` rate per worker; 4S prepared in at most 1.2x
the peak memory of S.

A third corpus holds S bytes in documents of 40 MiB (issue 30: a 40 MB text file took 10 GB; at
most half of S each, so that validation has a document of its own), prepared like S with 1 worker
and curation off and again with every curation step and 2 workers; its peak memory over S's in the
same settings is the figure: a document is tokenized and fingerprinted a piece at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

from common import REPO, RESULTS, parse_args, tail, write_result

SMOKE = {"size_mb": 1}
LARGE_DOCUMENT_BYTES = 40 * 2**20
"""The size of a book-length document: the issue's 40 MB text file."""
SHARD_BYTES = 8 * 2**20
"""Chunks of 8 MiB, so that even S is many chunks: with fewer chunks than twice the workers, every
chunk is in flight at once and memory still grows with the corpus."""

PREPARE = """
import json, sys, time
from pathlib import Path
from orchestrator.data.prepare import prepare_data
from orchestrator.data.spec import DataSpec
if __name__ == "__main__":
    spec = DataSpec.model_validate(json.loads(sys.argv[1]))
    start = time.perf_counter()
    data = prepare_data(spec, 0, Path(sys.argv[2]), workers=int(sys.argv[3]))
    print(json.dumps({"seconds": time.perf_counter() - start, "tokens": data.train_tokens + data.val_tokens,
                      "dir": str(data.dir), "curation": data.manifest.curation, "phases": data.manifest.seconds}))
"""

ENCODE = """
import json, sys, time
from pathlib import Path
from tokenizers import Tokenizer
if __name__ == "__main__":
    tokenizer = Tokenizer.from_file(sys.argv[1])
    texts = [json.loads(line)["text"] for line in Path(sys.argv[2]).read_text().splitlines()]
    start = time.perf_counter()
    tokens = sum(len(e.ids) for e in tokenizer.encode_batch(texts, add_special_tokens=False))
    print(json.dumps({"seconds": time.perf_counter() - start, "tokens": tokens}))
"""


def synthetic_corpus(path: Path, size_bytes: int, seed: int = 0, document_bytes: int | None = None) -> None:
    """Documents of 200 to 2,000 words (or of `document_bytes` characters each) drawn from a Zipf law over
    30,000 made-up words, until `size_bytes`."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlucmfwypvbgkjqxz"))
    vocabulary = ["".join(rng.choice(letters, size=rng.integers(2, 10))) for _ in range(30_000)]
    mean_word = np.mean([len(w) + 1 for w in vocabulary])  # the Zipf law favours the first words: draw enough, then cut
    written = 0
    with path.open("w") as out:
        while written < size_bytes:
            words = int(2 * document_bytes / mean_word) if document_bytes else int(rng.integers(200, 2000))
            ids = np.minimum(rng.zipf(1.2, size=words), len(vocabulary)) - 1
            text = " ".join(vocabulary[i] for i in ids)
            line = json.dumps({"text": text[:document_bytes] if document_bytes else text}) + "\n"
            out.write(line)
            written += len(line)


def measured(argv: list[str], env: dict, log: Path) -> tuple[dict, int]:
    """The command's JSON result and the peak of the summed resident memory of it and its children; its
    error output goes to `log`, whose tail a failure shows."""
    with log.open("w") as errors:
        process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=errors, text=True)
    root, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.05)
    out = process.stdout.read()
    if process.returncode != 0:
        raise RuntimeError(f"{log.stem} failed with exit code {process.returncode}; last lines of {log}:\n{tail(log)}")
    return json.loads(out.strip().splitlines()[-1]), peak


def large_documents(work: Path, size_bytes: int, env: dict, settings: dict[str, tuple[dict, int, int]]) -> dict:
    """S bytes in documents of 40 MiB (at most half of S) prepared in each of `settings` (name: the
    spec used for S, workers, S's peak memory in them): seconds and peak memory against S's."""
    document_bytes = min(LARGE_DOCUMENT_BYTES, size_bytes // 2)
    corpus = work / "corpus-S-large-documents.jsonl"
    synthetic_corpus(corpus, size_bytes, seed=1, document_bytes=document_bytes)
    figures = {"document_mib": round(document_bytes / 2**20, 1), "bytes": corpus.stat().st_size}
    for name, (spec, workers, small_peak) in settings.items():
        argv = [sys.executable, "-c", PREPARE, json.dumps({**spec, "path": str(corpus)}), str(work / f"cache-large-{name}"), str(workers)]
        result, peak = measured(argv, env, work / f"prepare-large-{name}.log")
        figures[name] = {"seconds": round(result["seconds"], 1), "peak_rss_mib": round(peak / 2**20),
                         "peak_over_small_documents": round(peak / small_peak, 3)}
        print(f"S in {document_bytes / 2**20:.0f} MiB documents, {name}: {result['seconds']:.1f} s, peak {peak / 2**20:.0f} MiB "
              f"({peak / small_peak:.2f}x S's)", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mb", type=int, default=200, help="S, the smaller corpus (the larger is 4S)")
    parser.add_argument("--out", type=Path, default=RESULTS / "data.json")
    args = parse_args(parser, SMOKE)
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1", "HF_DATASETS_OFFLINE": "1"}
    rows, results = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        work = Path(tmp)
        pipeline_only = {"curation": {"exact_dedup": False, "near_dedup": None, "redact_pii": False, "quality": None}}
        for label, factor in (("S", 1), ("4S", 4)):
            corpus = work / f"corpus-{label}.jsonl"
            synthetic_corpus(corpus, args.size_mb * 2**20 * factor)
            for workers in (1, 2):
                spec = {"path": str(corpus), "val_fraction": 0.01, "tokenizer": {"sample_bytes": 32 * 2**20}, "shard_bytes": SHARD_BYTES, **pipeline_only}
                argv = [sys.executable, "-c", PREPARE, json.dumps(spec), str(work / f"cache-{label}-{workers}"), str(workers)]
                result, peak = measured(argv, env, work / f"prepare-{label}-{workers}.log")
                results[(label, workers)] = {**result, "peak_rss": peak, "bytes": corpus.stat().st_size}
                print(f"{label} ({corpus.stat().st_size / 2**20:.0f} MiB), {workers} worker(s): {result['seconds']:.1f} s, "
                      f"{result['tokens'] / result['seconds']:,.0f} tokens/s, peak {peak / 2**20:.0f} MiB", flush=True)
        # The limit: the same tokenizer over (the first 64 MiB of) the same text, encode_batch on one thread.
        tokenizer = Path(results[("S", 1)]["dir"]) / "tokenizer" / "tokenizer.json"
        sample = work / "sample.jsonl"
        with (work / "corpus-S.jsonl").open() as src, sample.open("w") as dst:
            size = 0
            for line in src:
                dst.write(line)
                size += len(line)
                if size > 64 * 2**20:
                    break
        limit, _ = measured([sys.executable, "-c", ENCODE, str(tokenizer), str(sample)], env, work / "encode.log")
        limit_rate = limit["tokens"] / limit["seconds"]
        spec = {"path": str(work / "corpus-S.jsonl"), "val_fraction": 0.01, "tokenizer": {"sample_bytes": 32 * 2**20}, "shard_bytes": SHARD_BYTES,
                "curation": {"near_dedup": {"threshold": 0.8}}}  # every step, near-deduplication included
        curated, curated_peak = measured([sys.executable, "-c", PREPARE, json.dumps(spec), str(work / "cache-curated"), "2"], env,
                                         work / "prepare-curated.log")
        large = large_documents(work, args.size_mb * 2**20, env, {
            "pipeline_1_worker": ({**spec, "curation": pipeline_only["curation"]}, 1, results[("S", 1)]["peak_rss"]),
            "curated_2_workers": (spec, 2, curated_peak)})
    rate = {key: r["tokens"] / r["seconds"] for key, r in results.items()}
    for (label, workers), r in results.items():
        tokenize_rate = r["tokens"] / r["phases"]["tokenize"]
        rows.append({"corpus": label, "bytes": r["bytes"], "workers": workers, "seconds": round(r["seconds"], 2), "phases_s": r["phases"],
                     "tokens_per_s": round(rate[(label, workers)]),
                     # the tokenizing phase (read a chunk, encode, write its shards) against encode_batch alone
                     "tokenize_per_worker_vs_encode_batch": round(tokenize_rate / workers / limit_rate, 3),
                     "peak_rss_mib": round(r["peak_rss"] / 2**20)})
    summary = {
        "encode_batch_tokens_per_s": round(limit_rate),
        "scaling_1_to_2_workers": {label: round(rate[(label, 2)] / rate[(label, 1)], 3) for label in ("S", "4S")},
        "tokenize_phase_scaling_1_to_2_workers": {label: round(results[(label, 1)]["phases"]["tokenize"] / results[(label, 2)]["phases"]["tokenize"], 3)
                                                  for label in ("S", "4S")},
        "peak_memory_4S_over_S": {w: round(results[("4S", w)]["peak_rss"] / results[("S", w)]["peak_rss"], 3) for w in (1, 2)},
        "curated_S_2_workers": {"seconds": round(curated["seconds"], 1), "peak_rss_mib": round(curated_peak / 2**20),
                                "slowdown_vs_pipeline_only": round(curated["seconds"] / results[("S", 2)]["seconds"], 2),
                                "counts": curated["curation"]},
        "large_documents_S": large,
    }
    for row in rows:
        print(row)
    print(json.dumps(summary, indent=1))
    write_result(args.out, {"size_mb": args.size_mb, "smoke": args.smoke, "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
