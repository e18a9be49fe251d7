"""The model card's technical documentation, after the EU AI Act's Annex XI, Section 1 (what a provider
of a general-purpose AI model documents): what the model is and is for, how it was trained, on what
data, with how much compute and energy, how it was evaluated, and its known limitations.

Every figure comes from the run's own records: plan.json (model, batch, FLOPs per token), data.json
and the prepared data's source list, the event log (time), the energy bill and the gate report. Only
what no record can know (provider, licence, uses, further limitations) comes from the recipe's
`card` section. A release also writes the compute, time and energy figures as `technical.json`
(`technical_figures`), from the same `Compute` and the same bill the card prints.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from orchestrator.shared.data.prepared import InstructionManifest, TextManifest
from orchestrator.shared.model.architectures import lookup_params
from orchestrator.gates.outcome import GateReport
from orchestrator.plan.estimate import TrainingFlops
from orchestrator.recipe.schema import Recipe
from orchestrator.rundir.bill import EnergyBill
from orchestrator.rundir.layout import RunDir
from orchestrator.rundir.records import DataRecord, PlanRecord, read_data, read_plan, read_provenance, read_recipe
from orchestrator.rundir.rows import Checkpoint, Start

if TYPE_CHECKING:
    from orchestrator.data.corpus import SourceFile

HEADING = "## Technical documentation (EU AI Act, Annex XI)"
FIXED_LIMITATIONS = (
    "The gates test what they test: a few prompts, canaries and probe pairs; passing them is not proof of safety.",
    "Quality is measured on this run's own held-out split, not on an external benchmark.",
    "Energy figures marked estimated are models of power (TDP and load, W per GiB), not measurements.",
)
BUILTIN_CORPORA = {"python-stdlib": "the Python standard library's source files on the machine that prepared the data"}


@dataclass(frozen=True)
class RunRecords:
    """What the card reads of a run, read once."""

    run: RunDir
    recipe: Recipe
    plan: PlanRecord
    data: DataRecord

    @classmethod
    def read(cls, run: RunDir) -> "RunRecords":
        return cls(run, read_recipe(run), read_plan(run), read_data(run))


@dataclass(frozen=True)
class Compute:
    """Training compute by the plan's own count (`TrainingFlops`, as torchtitan and Megatron-LM count
    it): per token, 6 x the parameters of the matmuls forward and backward (4 x for a frozen one: no
    weight gradient; none for the input embedding, a lookup) plus 12 x layers x hidden x sequence for
    attention; times the tokens the released checkpoint was trained on (its steps, each of the plan's
    tokens per step)."""

    num_params: int
    lookup_params: int
    counted: TrainingFlops
    """The count with this plan's figures; `formula_holds` says whether plan.json recorded the same."""
    num_layers: int
    hidden_size: int
    seq_len: int
    flops_per_token: float
    """As plan.json records it (`estimate.flops_per_token`)."""
    steps: int
    tokens_per_step: int

    @classmethod
    def of(cls, plan: PlanRecord, steps: int) -> "Compute":
        model, sizes = plan.model, plan.model.sizes
        lookups = lookup_params(model.arch, sizes)
        counted = TrainingFlops.of(sizes=sizes, num_params=model.num_params, frozen_params=model.frozen_params,
                                   lookup_params=lookups, seq_len=plan.batch.seq_len)
        return cls(model.num_params, lookups, counted, sizes.num_layers, sizes.hidden_size, plan.batch.seq_len,
                   plan.estimate.flops_per_token, steps, plan.batch.tokens_per_step)

    @property
    def dense_per_token(self) -> int:
        return self.counted.dense

    @property
    def formula(self) -> str:
        dense = "6 x trained parameters + 4 x frozen parameters" if self.counted.frozen_weights else "6 x parameters"
        return f"({dense} + 12 x layers x hidden_size x seq_len) x steps x tokens_per_step"

    @property
    def dense_terms(self) -> str:
        """The formula's dense part with this model's numbers."""
        trained, frozen = self.counted.trained_weights, self.counted.frozen_weights
        return f"6 x {trained:,} + 4 x {frozen:,}" if frozen else f"6 x {trained:,}"

    @property
    def attention_per_token(self) -> int:
        return self.counted.attention

    @property
    def formula_holds(self) -> bool:
        """False for a plan written by a version with another formula: its recorded figure is used."""
        return self.counted.per_token == self.flops_per_token

    @property
    def tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def flops(self) -> int | float:
        """Exact (an integer) whenever the recorded FLOPs per token is a whole number, as the formula's are."""
        per_token = self.flops_per_token
        return int(per_token) * self.tokens if float(per_token).is_integer() else per_token * self.tokens


def technical_figures(records: RunRecords, report: GateReport, bill: EnergyBill | None) -> dict:
    """`technical.json`: the release's training compute, time and energy, machine-readable."""
    compute = Compute.of(records.plan, report.step)
    energy = None
    if bill:
        keys = ("kwh", "measured_kwh", "estimated_kwh", "coverage", "pue", "facility_kwh", "kgco2e", "steps")
        energy = {key: getattr(bill.totals, key) for key in keys}
    return {
        "version": 1,
        "checkpoint": report.checkpoint,
        "checkpoint_hash": report.checkpoint_hash,
        "parameters": compute.num_params,
        "compute": {
            "flops": compute.flops, "formula": compute.formula, "flops_per_token": compute.flops_per_token,
            "dense_flops_per_token": compute.dense_per_token, "attention_flops_per_token": compute.attention_per_token,
            "num_layers": compute.num_layers, "hidden_size": compute.hidden_size, "seq_len": compute.seq_len,
            "steps": compute.steps, "tokens_per_step": compute.tokens_per_step, "tokens": compute.tokens,
        },
        "wall_s_to_checkpoint": wall_to_checkpoint(records.run, report.step),
        "energy": energy,
    }


def wall_to_checkpoint(run: RunDir, step: int) -> float | None:
    """Seconds from the run's first start to the save of checkpoint `step` (restarts, and any wait
    between attempts, included); None when the event log does not hold both."""
    history = run.history()
    starts = [e.time for e in history if isinstance(e, Start)]
    saves = [e.time for e in history if isinstance(e, Checkpoint) and e.step == step]
    return saves[-1] - starts[0] if starts and saves else None


def technical_documentation(records: RunRecords, report: GateReport, bill: EnergyBill | None, released: datetime) -> list[str]:
    """The card's Annex XI section, as Markdown lines."""
    compute, wall_s = Compute.of(records.plan, report.step), wall_to_checkpoint(records.run, report.step)
    return [HEADING, "", "Every figure below is computed from the run's records (plan, data manifest, event log, "
            "energy bill, gate report); only provider, licence, uses and further limitations are declared in the recipe's `card`.",
            *_general(records, report, released), *_design(records), *_data(records), *_compute(records, compute, wall_s),
            *_energy(records, bill), *_evaluation(report), *_limitations(records.recipe)]


def _stated(value: str | None, key: str) -> str:
    return value if value else f"not stated (`card.{key}` in the recipe)"


def _listed(items: list[str], key: str) -> list[str]:
    return [f"  - {item}" for item in items] or [f"  - not stated (`card.{key}` in the recipe)"]


def _general(records: RunRecords, report: GateReport, released: datetime) -> list[str]:
    recipe, plan, card = records.recipe, records.plan, records.recipe.card
    sizes, vocab = plan.model.sizes, records.data.manifest.vocab_size
    gated = datetime.fromtimestamp(report.evaluated_at, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        "", "### General description (point 1)",
        f"- provider: {_stated(card.provider, 'provider')}",
        "- intended tasks and the systems it may be built into (1(a)):", *_listed(card.intended_uses, "intended_uses"),
        "- excluded uses (1(b)):", *_listed(card.excluded_uses, "excluded_uses"),
        f"- acceptable-use policy (1(b)): {_stated(card.acceptable_use_policy, 'acceptable_use_policy')}",
        f"- release (1(c)): released {released.astimezone(timezone.utc):%Y-%m-%d %H:%M UTC}, checkpoint {report.checkpoint} "
        f"(content hash {report.checkpoint_hash}), gated {gated}; distributed as "
        "this directory, whose `release.json` holds the sha256 of every file (`orch verify DIR` checks them)",
        f"- architecture and size (1(d)): {plan.model.arch}, {plan.model.num_params:,} parameters: {sizes.num_layers} layers, "
        f"hidden size {sizes.hidden_size}, {sizes.num_heads} attention heads ({sizes.num_kv_heads} key/value), "
        f"MLP {sizes.intermediate_size}, vocabulary {sizes.vocab_size:,}" + (", embeddings tied" if sizes.tie_embeddings else ""),
        f"- modality and format (1(e)): text in, text out. Input: UTF-8 text as token ids of the included tokenizer "
        f"({recipe.data.tokenizer.kind}, {vocab:,} ids), trained on contexts of {records.plan.batch.seq_len} tokens "
        f"(positions up to {sizes.max_position_embeddings}); output: a distribution over the next token's {vocab:,} ids",
        f"- licence (1(f)): {_stated(card.licence, 'licence')}",
    ]


def _design(records: RunRecords) -> list[str]:
    recipe, plan = records.recipe, records.plan
    train, batch, lora = recipe.train, plan.batch, recipe.model.lora
    opt, schedule = train.optimizer, train.schedule
    provenance = read_provenance(records.run)
    libraries = provenance.libraries if provenance else {}
    versions = ", ".join(f"{name} {version}" for name, version in libraries.items() if version)
    lines = [
        "", "### Integration and design (points 2(a), 2(b))",
        "- integration: `AutoModelForCausalLM.from_pretrained(DIR)` and `AutoTokenizer.from_pretrained(DIR)` (Hugging Face "
        "transformers; safetensors weights)" + (f"; trained with {versions}" if versions else ""),
        f"- objective: {_objective(recipe)}",
        f"- optimiser: AdamW, learning rate {opt.lr:g}, betas {opt.betas[0]:g}/{opt.betas[1]:g}, weight decay {opt.weight_decay:g}; "
        f"{schedule.warmup_steps} warmup steps, then {schedule.decay} decay to {schedule.min_lr_ratio:g} x the rate; "
        + (f"gradients clipped at norm {train.grad_clip:g}" if train.grad_clip else "no gradient clipping"),
        f"- batch: micro {batch.micro_batch_size} x accumulation {batch.gradient_accumulation_steps} x data-parallel "
        f"{batch.data_parallel} = {batch.global_batch_size} sequences x {batch.seq_len} tokens = {batch.tokens_per_step:,} tokens per step",
        f"- numerics and parallelism: {train.precision}, {plan.backend} ZeRO stage {recipe.distributed.zero_stage}, seed {train.seed}",
    ]
    if lora:
        lines.append(f"- adaptation: LoRA rank {lora.rank}, alpha {lora.alpha:g} on {', '.join(lora.target_modules)}; the base "
                     "weights stayed frozen and the adapter is merged into the released weights")
    return lines


def _objective(recipe: Recipe) -> str:
    start = f"starting from the weights of {recipe.model.path}" if recipe.model.path else "from random initialisation"
    instruction = recipe.data.instruction
    if instruction is None:
        return f"next-token prediction (causal language modelling, cross-entropy on every token), {start}"
    packed = "; several examples packed per sequence, never attending across each other" if instruction.packing else ""
    return f"supervised fine-tuning on prompt/response examples, cross-entropy on the response tokens only, {start}{packed}"


def _sources(records: RunRecords) -> list[SourceFile] | None:
    """The source files with their sha256: from the prepared data's list, or from provenance.json
    (the same list, recorded by `orch run`) when the data cache has been cleared."""
    from orchestrator.data.prepare import SOURCES, parse_sources, read_sources

    if (records.data.dir / SOURCES).is_file():
        return read_sources(records.data.dir)
    provenance = read_provenance(records.run)
    listed = provenance.source_files() if provenance else None
    return parse_sources(listed) if listed is not None else None


def _data(records: RunRecords) -> list[str]:
    spec, data = records.recipe.data, records.data.manifest
    unit = "examples" if spec.instruction is not None else "documents"
    kind = "instruction examples (prompt/response rows)" if spec.instruction is not None else "text documents"
    origin = "; ".join(_origin(source, len(spec.mixture()) > 1) for source in spec.mixture())
    counts = ", ".join(f"{split} {count:,}" for split, count in data.documents.items()) or "(count not recorded)"
    canaries = (f"{len(data.canaries)} random secrets inserted {spec.canaries.repeats} time(s) each into the training split "
                "(for the memorisation gate)") if data.canaries else "none inserted"
    lines = [
        "", "### Training data (point 2(c))",
        f"- type and provenance: {kind} from {origin}",
        f"- size: {counts} {unit}; {data.train_tokens:,} training tokens, {data.val_tokens:,} held out "
        f"(the validation split: whole {unit}, {spec.val_fraction:g} of them, drawn with seed {records.recipe.train.seed})",
        f"- canaries: {canaries}",
        *_curation(data.curation if isinstance(data, TextManifest) else None),
    ]
    if isinstance(data, InstructionManifest):
        lines.append(f"- examples longer than {spec.seq_len} tokens, truncated: {data.truncated_examples:,}")
    return lines + _source_lines(_sources(records))


def _origin(source, weighted: bool) -> str:
    origin = f"the built-in corpus `{source.builtin}` ({BUILTIN_CORPORA.get(source.builtin, 'see the files')})" if source.builtin else str(source.path)
    capped = f", its first files up to {source.max_bytes:,} bytes (`max_bytes`)" if source.max_bytes else ""
    return (f"`{source.label}` with weight {source.weight:g}: " if weighted else "") + origin + capped


def _curation(curation: dict | None) -> list[str]:
    """What the data manifest records under `curation` (deduplication, filtering, redaction), as it is."""
    if not curation:
        return ["- curation: none ran; the files were used as read (no deduplication, filtering or personal-data redaction)"]
    return ["- curation:", *(f"  - {key}: {value}" for key, value in _flatten(curation))]


def _flatten(value, prefix: str = "") -> list[tuple[str, object]]:
    if not isinstance(value, dict):
        return [(prefix, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else value)]
    return [item for key, child in value.items() for item in _flatten(child, f"{prefix}.{key}" if prefix else str(key))]


def _source_lines(sources: list[SourceFile] | None) -> list[str]:
    if sources is None:
        return ["- source files: not recorded (neither the data cache's list nor provenance.json is present)"]
    total = sum(s.bytes for s in sources)
    return [f"- source files: {len(sources):,}, {total:,} bytes, each with its sha256:", "", "<details><summary>source files</summary>", "",
            "| file | bytes | sha256 |", "| --- | --- | --- |",
            *(f"| {s.path} | {s.bytes:,} | {s.sha256} |" for s in sources), "", "</details>"]


def _compute(records: RunRecords, compute: Compute, wall_s: float | None) -> list[str]:
    c, model, topology = compute, records.recipe.model, records.plan.topology
    lines = [
        "", "### Computational resources (point 2(d))",
        f"- training compute: {c.flops:.4e} FLOPs = {c.formula}",
        f"  - = ({c.dense_terms} + 12 x {c.num_layers} x {c.hidden_size} x {c.seq_len}) x {c.steps:,} x {c.tokens_per_step:,}",
        f"  - = {c.flops_per_token:,.0f} FLOPs per token x {c.tokens:,} tokens = {c.flops:,} FLOPs",
    ]
    if c.lookup_params:
        lines.append(f"  - parameters: the model's {c.num_params:,} less the {c.lookup_params:,} only looked up, never multiplied "
                     "(an input embedding not tied to the output projection, a learned position table), as torchtitan and Megatron-LM count")
    if not c.formula_holds:
        lines.append("  - plan.json's FLOPs per token differ from this formula (a plan made by another version): its figure is used")
    if model.lora:
        lines.append("  - LoRA: the base's weights are frozen (forward and input-gradient matmuls, no weight gradient); the adapters train")
    if model.path:
        lines.append(f"  - this training only: the base model's compute is documented with it ({model.path})")
    return lines + [
        "- training time: " + (f"{wall_s:,.0f} s from the run's first start to this checkpoint's save" if wall_s is not None
                               else "not recorded (no start and save of this checkpoint in the event log)"),
        f"- hardware: {topology.nodes} node(s) x {topology.procs_per_node} process(es) = {topology.world_size} {topology.device} "
        f"rank(s), {topology.comm_backend}, {records.plan.backend}, {records.recipe.train.precision}",
    ]


def _energy(records: RunRecords, bill: EnergyBill | None) -> list[str]:
    head = ["", "### Energy consumption (point 2(e))"]
    if not bill:
        forecast = records.plan.energy.forecast
        planned = f"; the plan's forecast for {records.recipe.train.steps} steps was {forecast.kwh:.6g} kWh ({forecast.basis})" \
            if forecast and forecast.kwh else ""
        return head + [f"- energy consumed: not measured (energy.enabled was false for this run){planned}"]
    t = bill.totals
    devices = Counter(f"{d.kind} ({d.method})" for _, d in bill.devices())
    lines = head + [
        f"- energy consumed: {t.kwh:.6g} kWh (IT equipment), x PUE {t.pue:g} = {t.facility_kwh:.6g} kWh at the facility",
        f"- method: measured {t.measured_kwh:.6g} kWh (hardware energy counters, integrated power readings), estimated "
        f"{t.estimated_kwh:.6g} kWh (power models); counter coverage {t.coverage:.0%} of device-seconds; devices: "
        + ", ".join(f"{count} {what}" for what, count in sorted(devices.items())),
        f"- scope: the whole run, {bill.attempts} attempt(s) through step {t.steps:,} "
        f"({bill.failures_kwh.lost:.6g} kWh lost to failures)",
        f"- emissions: {t.kgco2e:.6g} kgCO2e at {t.intensity.g_per_kwh:.1f} g/kWh ({t.intensity.source})",
    ]
    lines += [f"- not metered: {m.node} {m.device} ({m.reason}): not counted, not zero" for m in t.missing]
    return lines


def _evaluation(report: GateReport) -> list[str]:
    lines = ["", "### Evaluation results",
             f"Gates on this checkpoint: {report.verdict()}; required: {', '.join(report.required) or 'none'}."]
    for r in report.results:
        measured = "" if r.value is None else f", value {r.value:.4g}" + ("" if r.threshold is None else f" (limit {r.threshold:.4g})")
        lines.append(f"- {r.name}: {r.status}{measured}: {r.summary}")
        lines += [f"  - {task}: {_score(score)}" for task, score in r.scores.items()]
    return lines


def _score(score) -> str:
    if isinstance(score, dict):
        return ", ".join(f"{metric} {_score(value)}" for metric, value in score.items())
    return f"{score:.4g}" if isinstance(score, (int, float)) and not isinstance(score, bool) else str(score)


def _limitations(recipe: Recipe) -> list[str]:
    return ["", "### Known limitations", *(f"- {item}" for item in (*recipe.card.limitations, *FIXED_LIMITATIONS))]

