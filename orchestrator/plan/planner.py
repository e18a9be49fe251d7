"""`make_plan(recipe, env) -> LaunchPlan`: pure planning, no side effects.

The plan is data: the files to write into the run directory and the processes to start.
Executing it is `orchestrator.starting.execute`'s job; tests assert on plans. Planning is two steps:
`check_recipe` collects every problem the recipe has on this machine (all reported together),
then the estimates (model size, memory, time, energy) are derived from the checked recipe.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from orchestrator.backends.registry import BACKENDS
from orchestrator.checkpoint.spec import CheckpointSpec
from orchestrator.energy.forecast import EnergyRequest, plan_forecast
from orchestrator.shared.energy.grid import Intensity, IntensityError, resolve_intensity
from orchestrator.shared.energy.hardware import cpu_power
from orchestrator.data.files import path_problem
from orchestrator.shared.env import EnvSnapshot
from orchestrator.errors import Problem, RecipeError
from orchestrator.shared.model.architectures import ARCHITECTURES, Architecture, Sizes
from orchestrator.model.pretrained import BaseModel, read_base_model
from orchestrator.plan.arithmetic import Batch, Topology, check_offload, check_precision, resolve_batch, resolve_topology
from orchestrator.plan.calibration import Calibration, Calibrations, calibration_key
from orchestrator.plan.estimate import TimeEstimate, TrainingFlops, estimate_time
from orchestrator.plan.memory import GiB, HostMemoryEstimate, MemoryEstimate, MemoryRequest, construction_bytes, estimate_memory
from orchestrator.recipe.loader import LoadedRecipe, recipe_hash
from orchestrator.shared.redact import redact_recipe
from orchestrator.recipe.schema import Recipe
from orchestrator.rundir.entry import ATTACHED_FLAG, node_argv
from orchestrator.rundir.layout import LAUNCH_LOG, PLAN_FILE, RECIPE_FILE, RunDir
from orchestrator.rundir.records import CommandRecord, EnergyRecord, ModelRecord, PlanRecord, plan_json, recipe_yaml

DRY_RUN_STEPS = 5
DRY_RUN_SUFFIX = "-dry-run"
"""A dry run's directory is the real run's with this suffix: its checkpoint must never be resumed by the real run."""


ProcessSpec = CommandRecord
"""A process to start (argv, added env, cwd, log): plan.json's `commands` entry itself."""


@dataclass(frozen=True)
class ModelPlan:
    """What the planner knows of the model: its architecture, sizes and parameter count."""

    arch: Architecture
    sizes: Sizes
    num_params: int
    adapters: int | None
    """LoRA's trainable parameters; None for full training."""
    largest_layer: int
    """The biggest single parameter tensor: ZeRO-3 gathers it whole on one device."""

    @property
    def frozen_params(self) -> int:
        """The parameters that take no weight gradient: a LoRA fine-tune's base."""
        return 0 if self.adapters is None else self.num_params - self.adapters


@dataclass(frozen=True)
class LaunchPlan:
    """The plan: its record (`plan.json`, what every rank reads) and what only the control plane
    needs beside it. The figures are the record's own; the properties below only name them."""

    recipe: Recipe
    contract: PlanRecord
    cache_dir: Path
    """This machine's cache: prepared data, and completed runs' measurements for later forecasts."""

    def record(self) -> PlanRecord:
        """The plan as the run directory's contract: `plan.json`, which every rank reads, and `plan --json`."""
        return self.contract

    def detached(self) -> "LaunchPlan":
        """The same plan with its local node launcher not attached: it trains on when `orch run` ends
        (`--detach`), where an attached one stops after a checkpoint when the CLI dies."""
        commands = [c.model_copy(update={"argv": [a for a in c.argv if a != ATTACHED_FLAG]}) for c in self.contract.commands]
        return dataclasses.replace(self, contract=self.contract.model_copy(update={"commands": commands}))

    # The record's figures under the names the planner's callers use.

    @property
    def run_dir(self) -> Path:
        return self.contract.run_dir

    @property
    def recipe_hash(self) -> str:
        return self.contract.recipe_hash

    @property
    def dry_run(self) -> bool:
        return self.contract.dry_run

    @property
    def topology(self) -> Topology:
        return self.contract.topology

    @property
    def batch(self) -> Batch:
        return self.contract.batch

    @property
    def arch(self) -> str:
        return self.contract.model.arch

    @property
    def sizes(self) -> Sizes:
        return self.contract.model.sizes

    @property
    def num_params(self) -> int:
        return self.contract.model.num_params

    @property
    def memory(self) -> MemoryEstimate:
        return self.contract.memory_per_device

    @property
    def host_memory(self) -> HostMemoryEstimate:
        return self.contract.host_memory_per_node

    @property
    def time(self) -> TimeEstimate:
        return self.contract.estimate

    @property
    def energy(self) -> EnergyRecord:
        return self.contract.energy

    @property
    def backend_files(self) -> dict[str, dict]:
        return self.contract.backend_files

    @property
    def processes(self) -> list[ProcessSpec]:
        return self.contract.commands

    @property
    def checkpoint_dir(self) -> Path:
        return self.contract.checkpoint_dir

    @property
    def data_cache_dir(self) -> Path:
        return self.contract.data_cache_dir

    @property
    def warnings(self) -> list[str]:
        return self.contract.warnings

    def files(self) -> dict[str, str]:
        """Relative path -> content, written into the run directory before any process starts."""
        files = {RECIPE_FILE: recipe_yaml(self.recipe), PLAN_FILE: plan_json(self.contract)}
        files.update({name: json.dumps(content, indent=2) for name, content in self.backend_files.items()})
        return files


@dataclass(frozen=True)
class Checked:
    """A recipe that passed every check on this machine, with what the checks resolved."""

    recipe: Recipe
    topology: Topology
    batch: Batch
    intensity: Intensity
    base: BaseModel | None


def check_recipe(loaded: LoadedRecipe, env: EnvSnapshot) -> Checked:
    """Every problem the recipe has on this machine, raised together as one RecipeError."""
    problems: list[Problem] = []
    topology = resolve_topology(loaded, env, problems)
    batch = resolve_batch(loaded, topology, problems)
    check_precision(loaded, env, topology, problems)
    check_offload(loaded, topology, problems)
    backend = BACKENDS[loaded.recipe.distributed.backend]
    if backend.name not in env.libraries:
        problems.append(loaded.problem("distributed.backend", backend.install_hint))
    intensity = _intensity(loaded, env, problems)
    base = _base_model(loaded, problems)
    _check_gate_files(loaded, env, problems)
    if loaded.recipe.checkpoint.local_dir and topology.nodes > 1:
        problems.append(loaded.problem("checkpoint.local_dir", f"is node-local, and a run on {topology.nodes} nodes commits "
                                       "each checkpoint from every node's shards: give a checkpoint.dir every node sees"))
    if problems:
        raise RecipeError(problems)
    return Checked(loaded.recipe, topology, batch, intensity, base)


def make_plan(
    loaded: LoadedRecipe, env: EnvSnapshot, *, run_dir: Path | None = None, dry_run: bool = False, load_universal: bool = False,
    calibrations: Calibrations = Calibrations(),
) -> LaunchPlan:
    """`calibrations`: what earlier runs measured (read at the edge), for the time and energy forecast.
    The local node launcher is attached to the CLI that starts it; `LaunchPlan.detached()` for `--detach`."""
    checked = check_recipe(loaded, env)
    recipe, topology, batch = checked.recipe, checked.topology, checked.batch
    # Every output is built from the plan's recipe: redacted here, no record or script holds a secret.
    recipe, secrets = redact_recipe(recipe)
    if dry_run:
        recipe = _dry_run_recipe(recipe, batch)
        topology = topology.model_copy(update={"nodes": 1, "procs_per_node": 1})
        batch = batch.model_copy(update={"data_parallel": 1})
    run_dir = (run_dir or env.cwd / "runs" / recipe.name).absolute()
    if dry_run:
        run_dir = run_dir.with_name(run_dir.name + DRY_RUN_SUFFIX)
    model = _model_plan(recipe, checked.base)
    memory = _memory(recipe, model, batch, env, topology)
    host_memory = _host_memory(recipe, model, memory, env, topology)
    key = calibration_key(recipe, model.arch.model_type, model.sizes, batch, topology, env)
    calibration = calibrations.lookup(key)
    flops = TrainingFlops.of(sizes=model.sizes, num_params=model.num_params, frozen_params=model.frozen_params,
                             lookup_params=model.arch.lookup_params(model.sizes), seq_len=batch.seq_len)
    time = estimate_time(flops, batch, topology, env, recipe.train.precision, recipe.train.steps, calibration, key)
    energy = _energy(recipe, env, topology, time, memory, checked.intensity, calibration)
    backend = BACKENDS[recipe.distributed.backend]
    record = PlanRecord(
        run_dir=run_dir,
        recipe_hash=recipe_hash(recipe),
        dry_run=dry_run,
        backend=backend.name,
        topology=topology,
        batch=batch,
        model=ModelRecord(arch=model.arch.model_type, num_params=model.num_params, frozen_params=model.frozen_params,
                          sizes=model.sizes, base=str(recipe.model.path.absolute()) if recipe.model.path else None),
        memory_per_device=memory,
        host_memory_per_node=host_memory,
        estimate=time,
        energy=energy,
        backend_files=backend.config_files(recipe, batch, model.sizes, model.num_params, load_universal),
        checkpoint_dir=_checkpoint_dir(recipe.checkpoint, run_dir),
        data_cache_dir=env.cache_dir / "data",
        commands=[_local_process(backend.name, backend.process_env(topology), env, topology, run_dir)],
        warnings=_memory_warnings(recipe, memory, host_memory) + [secret.warning() for secret in secrets],
    )
    return LaunchPlan(recipe=recipe, contract=record, cache_dir=env.cache_dir)


def _checkpoint_dir(spec: CheckpointSpec, run_dir: Path) -> Path:
    """`checkpoint.dir`; under `checkpoint.local_dir` (node-local, shared by every run on the node) a
    folder of the run's own, named for its run directory's path; else the run directory's `checkpoints/`."""
    if spec.local_dir is not None:
        return spec.local_dir.absolute() / f"{run_dir.name}-{hashlib.sha256(str(run_dir).encode()).hexdigest()[:12]}"
    return spec.dir or RunDir(run_dir).default_checkpoints


def _model_plan(recipe: Recipe, base: BaseModel | None) -> ModelPlan:
    arch = base.architecture if base else ARCHITECTURES[recipe.model.arch]
    sizes = base.sizes if base else recipe.model.sizes(recipe.data.tokenizer.effective_vocab_size)
    lora = recipe.model.lora
    adapters = arch.lora_params(sizes, lora.target_modules, lora.rank) if lora else None
    return ModelPlan(arch, sizes, arch.count_params(sizes) + (adapters or 0), adapters, arch.largest_layer_params(sizes))


def _memory(recipe: Recipe, model: ModelPlan, batch: Batch, env: EnvSnapshot, topology: Topology) -> MemoryEstimate:
    dist = recipe.distributed
    capacity = env.gpus[0].memory_bytes if env.gpus else env.memory_bytes // topology.procs_per_node
    return estimate_memory(MemoryRequest(
        sizes=model.sizes, num_params=model.num_params, largest_layer=model.largest_layer, batch=batch, zero_stage=dist.zero_stage,
        precision=recipe.train.precision, offload_optimizer=dist.offload_optimizer, offload_params=dist.offload_params,
        capacity_bytes=capacity, trainable_params=model.adapters, checkpointing=recipe.train.activation_checkpointing,
    ))


def _host_memory(recipe: Recipe, model: ModelPlan, memory: MemoryEstimate, env: EnvSnapshot, topology: Topology) -> HostMemoryEstimate:
    dist = recipe.distributed
    partitioned = dist.partitioned_construction
    # DeepSpeed builds in its training dtype; Horovod keeps fp32 weights and computes in autocast.
    build_precision = recipe.train.precision if dist.backend == "deepspeed" else "fp32"
    built = construction_bytes(model.num_params, model.largest_layer, build_precision, topology.world_size, partitioned)
    on_host = built if topology.device == "cpu" else 0
    return HostMemoryEstimate(procs_per_node=topology.procs_per_node, construction_bytes=on_host, partitioned=partitioned,
                              offload_bytes=memory.host_offload_bytes, capacity_bytes=env.memory_bytes)


def _memory_warnings(recipe: Recipe, memory: MemoryEstimate, host: HostMemoryEstimate) -> list[str]:
    warnings = []
    if not memory.fits:
        checkpointing = "" if recipe.train.activation_checkpointing else ", train.activation_checkpointing: true"
        warnings.append(
            f"estimated {memory.total_bytes / GiB:.1f} GiB per device exceeds {memory.capacity_bytes / GiB:.1f} GiB available: "
            f"raise distributed.zero_stage, enable offload{checkpointing}, or lower train.micro_batch_size"
        )
    if not host.fits:
        held = "its partition" if host.partitioned else "the whole model"
        partition = "distributed.zero3_init: true" if recipe.distributed.zero_stage == 3 else "distributed.zero_stage: 3"
        fix = ("fewer distributed.procs_per_node, or nodes with more memory" if host.partitioned
               else f"{partition} (each rank then constructs only its partition), or fewer distributed.procs_per_node")
        warnings.append(
            f"start-up needs {host.per_node_bytes / GiB:.1f} GiB of host memory per node ({host.procs_per_node} ranks x "
            f"{(host.construction_bytes + host.offload_bytes) / GiB:.1f} GiB: {held} while it is built"
            + (", plus offloaded state" if host.offload_bytes else "") + f") of {host.capacity_bytes / GiB:.1f} GiB: use {fix}"
        )
    return warnings


def _energy(recipe: Recipe, env: EnvSnapshot, topology: Topology, time: TimeEstimate, memory: MemoryEstimate,
            intensity: Intensity, calibration: Calibration | None) -> EnergyRecord:
    spec = recipe.energy
    cpu = cpu_power(env.cpu_model, env.cpu_count, spec.cpu_tdp_w)
    request = EnergyRequest(
        device=topology.device, gpu_name=env.gpus[0].name if env.gpus else None, cpu=cpu, nodes=topology.nodes,
        procs_per_node=topology.procs_per_node, wall_s=time.wall_s, wall_s_range=time.wall_s_range,
        memory_per_process_bytes=memory.total_bytes, memory_in_use_bytes=env.memory_in_use_bytes,
        measured_w=calibration.power_per_device_w if calibration else None,
    )
    forecast = plan_forecast(spec, request, intensity.g_per_kwh)
    return EnergyRecord(pue=spec.pue_value, intensity=intensity, cpu=cpu, forecast=forecast)


def _base_model(loaded: LoadedRecipe, problems: list[Problem]) -> BaseModel | None:
    """The base model a fine-tuning recipe starts from, checked: a causal LM with its tokenizer, and
    LoRA targets that exist in it."""
    model = loaded.recipe.model
    if model.path is None or not model.path.exists():
        return None  # no base, or the missing path is already reported
    try:
        base = read_base_model(model.path)
    except ValueError as exc:
        problems.append(loaded.problem("model.path", str(exc)))
        return None
    if model.lora:
        unknown = [name for name in model.lora.target_modules if name not in base.architecture.linear_modules]
        if unknown:
            problems.append(loaded.problem("model.lora.target_modules", f"{', '.join(unknown)} not in this {base.arch} model; "
                                           f"it has {', '.join(base.architecture.linear_modules)}"))
    return base


def _check_gate_files(loaded: LoadedRecipe, env: EnvSnapshot, problems: list[Problem]) -> None:
    """The files the gates read exist before anything trains (paths relative to the working directory)."""
    gates = loaded.recipe.gates
    files = [("gates.bias.pairs", gates.bias.pairs)] if gates.bias.pairs is not None else []
    files += [(f"gates.contamination.eval_files.{i}", path) for i, path in enumerate(gates.contamination.eval_files)]
    for key, path in files:
        if why := path_problem(env.cwd / path, "file"):  # a FIFO or a device would block or never end
            problems.append(loaded.problem(key, f"{why} (paths are relative to the working directory)"))
    for i, path in enumerate(gates.evaluation.task_dirs):
        if not (env.cwd / path).is_dir():
            problems.append(loaded.problem(f"gates.evaluation.task_dirs.{i}", f"{path}: no such directory (paths are relative to the working directory)"))


def _intensity(loaded: LoadedRecipe, env: EnvSnapshot, problems: list[Problem]) -> Intensity | None:
    """The grid intensity the recipe asks for; a relative time-series path is taken from the working
    directory, as data paths are."""
    try:
        return resolve_intensity(loaded.recipe.energy.carbon, env.cwd)
    except IntensityError as exc:
        problems.append(loaded.problem(f"energy.{exc.key}", str(exc)))
        return None


def _local_process(backend: str, backend_env: dict[str, str], env: EnvSnapshot, topology: Topology, run_dir: Path) -> ProcessSpec:
    """All ranks of this one node, started by the node launcher (as on every Slurm node) on a free local port."""
    argv = node_argv(env.python, backend, 1, topology.procs_per_node, run_dir, "127.0.0.1", env.free_port, node_rank=0, attached=True)
    added = {"OMP_NUM_THREADS": str(max(1, env.cpu_count // topology.procs_per_node)), **backend_env}
    return ProcessSpec(argv=argv, env=added, cwd=env.cwd, log=LAUNCH_LOG)


def _dry_run_recipe(recipe: Recipe, batch: Batch) -> Recipe:
    """The same recipe as one process for a few steps, keeping micro batch and accumulation."""
    data = recipe.model_dump()
    steps = min(recipe.train.steps, DRY_RUN_STEPS)
    data["train"].update(
        steps=steps,
        global_batch_size=None,
        gradient_accumulation_steps=batch.gradient_accumulation_steps,
        eval_interval=steps,
    )
    data["train"]["schedule"]["warmup_steps"] = min(recipe.train.schedule.warmup_steps, steps - 1)
    data["distributed"].update(nodes=1, procs_per_node=1)
    data["checkpoint"].pop("remote", None)  # a smoke test's checkpoints never reach the run's store
    data["checkpoint"].pop("local_dir", None)  # nor the run's node-local tier
    return Recipe.model_validate(data)
