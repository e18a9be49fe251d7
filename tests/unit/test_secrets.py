"""Secrets written inline in a recipe reach no output: plan text and JSON, the run directory's
files, the sbatch script, the dashboards' config; each is named in a warning pointing to slurm.pass_env."""


import pytest
import yaml

from orchestrator.plan.planner import make_plan
from orchestrator.plan.render import render_plan
from orchestrator.recipe.loader import load_recipe
from orchestrator.shared.redact import MARK, redact_text, redact_tree
from orchestrator.rundir.records import plan_json
from orchestrator.slurm.script import render_sbatch
from orchestrator.slurm.submit import cluster_env
from orchestrator.shared.tracking.mirror import run_config
from tests.helpers.planning import make_env
from tests.helpers.processes import orch
from tests.helpers.project import RECIPES, TINY

WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"
HF_TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz01234567"
PASSWORD = "s3cr3t-Pw"
OPENAI_KEY = "sk-proj-AbCdEfGhIjKlMnOpQrSt"
SECRETS = [WANDB_KEY, HF_TOKEN, PASSWORD, OPENAI_KEY]
INLINE = [
    f"slurm.setup=['export WANDB_API_KEY={WANDB_KEY}', 'huggingface-cli login --token {HF_TOKEN}', "
    f"'export OPENAI_BASE={OPENAI_KEY}', 'export NCCL_DEBUG=WARN']",
    f"tracking.mlflow.tracking_uri=https://alice:{PASSWORD}@mlflow.example.com",
    "slurm.pass_env=[MLFLOW_TRACKING_PASSWORD]",
]


@pytest.fixture
def plan(tmp_path):
    loaded = load_recipe(TINY, INLINE)
    return make_plan(loaded, cluster_env(make_env(tmp_path), loaded.recipe.slurm), run_dir=tmp_path / "run")


def assert_clean(text: str) -> None:
    assert not [secret for secret in SECRETS if secret in text]


def test_no_output_of_the_plan_holds_a_secret(plan):
    assert_clean(render_plan(plan))
    assert_clean(plan_json(plan.record()))
    for content in plan.files().values():
        assert_clean(content)
    script = render_sbatch(plan, plan.recipe.slurm, "/py", 120)
    assert_clean(script)
    recorded = yaml.safe_load(plan.files()["recipe.yaml"])
    assert_clean(str(run_config(recorded, plan.record())))
    assert recorded["tracking"]["mlflow"]["tracking_uri"] == f"https://alice:{MARK}@mlflow.example.com"


def test_a_setup_line_that_held_a_secret_is_left_out_of_the_job(plan):
    script = render_sbatch(plan, plan.recipe.slurm, "/py", 120)
    shell = [line for line in script.splitlines() if line and not line.startswith("#")]
    assert "export NCCL_DEBUG=WARN" in shell and not any("WANDB_API_KEY" in line or "--token" in line for line in shell)
    assert ': "${MLFLOW_TRACKING_PASSWORD:?' in script  # passed by name, checked in the job


def test_each_inline_secret_is_a_warning_naming_its_path(plan):
    warnings = [w for w in plan.warnings if "slurm.pass_env" in w]
    assert sorted(w.split(" ")[0] for w in warnings) == ["slurm.setup[0]", "slurm.setup[1]", "slurm.setup[2]", "tracking.mlflow.tracking_uri"]
    assert_clean(" ".join(warnings))


def test_the_dashboards_config_of_a_run_planned_before_redaction_is_redacted(plan):
    """An older run's recipe.yaml may still hold the value: the sinks get it redacted anyway."""
    old = load_recipe(TINY, INLINE).recipe.model_dump(mode="json")
    assert_clean(str(run_config(old, plan.record())))


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_hold_no_secret(recipe):
    assert redact_tree(yaml.safe_load(recipe.read_text()))[1] == []


@pytest.mark.parametrize("line", [
    "export TOKENIZERS_PARALLELISM=false",
    "export GOOGLE_APPLICATION_CREDENTIALS=/etc/gcp/key.json",
    "export HF_TOKEN=$(cat ~/.hf_token)",
    "export WANDB_API_KEY=$WANDB_KEY_FROM_VAULT",
    f"git -C /src checkout {WANDB_KEY}",
    "cd /models/hf_cache && ls",
    "export MLFLOW_TRACKING_URI=https://mlflow.example.com:5000/",
])
def test_references_and_lookalikes_are_kept(line):
    assert redact_text(line) == (line, [])


@pytest.mark.parametrize("line, secret", [
    (f"wandb login {WANDB_KEY}", WANDB_KEY),
    (f"export AWS_SECRET_ACCESS_KEY='{PASSWORD}'", PASSWORD),
    (f"HF_TOKEN={HF_TOKEN} python x.py", HF_TOKEN),
    (f"curl https://api.example.com/?api_key={PASSWORD}", PASSWORD),
    (f"export GH=ghp_{'a1' * 18}", f"ghp_{'a1' * 18}"),
    (f"pip install --index-url https://bob:{PASSWORD}@pypi.example.com/simple x", PASSWORD),
])
def test_known_shapes_are_redacted(line, secret):
    clean, kinds = redact_text(line)
    assert secret not in clean and MARK in clean and len(kinds) == 1


def test_a_release_of_a_run_planned_before_redaction_holds_no_secret(tmp_path):
    """The release's recipe.yaml is written redacted, not copied: an older run's file may hold the value."""
    from orchestrator.release.publish import _add_records
    from orchestrator.gates.outcome import GateReport
    from orchestrator.rundir.layout import RunDir
    from orchestrator.rundir.records import recipe_yaml, write_data
    from orchestrator.shared.data.prepared import PreparedData, parse_manifest
    from tests.helpers.planning import write_plan

    run = RunDir(tmp_path / "run")
    write_plan(run.path)
    run.recipe.write_text(recipe_yaml(load_recipe(TINY, INLINE).recipe))
    write_data(run, PreparedData(tmp_path / "data", parse_manifest({"vocab_size": 300, "train_tokens": 1000, "val_tokens": 100})))
    report = GateReport(checkpoint="step-00000010", step=10, checkpoint_hash="c", recipe_hash="r", evaluated_at=0.0,
                        required=[], passed=True, results=[])
    release = tmp_path / "release"
    release.mkdir()
    _add_records(run, release, report)
    for path in release.iterdir():
        assert_clean(path.read_text())
    assert yaml.safe_load((release / "recipe.yaml").read_text())["slurm"]["setup"][3] == "export NCCL_DEBUG=WARN"


def test_validate_and_plan_warn_without_repeating_the_value():
    for command in (("validate",), ("plan",), ("plan", "--slurm")):
        result = orch(*command, str(TINY), *INLINE)
        assert result.returncode == 0, result.stderr
        assert "slurm.setup[0] holds a value for WANDB_API_KEY inline" in result.stdout + result.stderr
        assert_clean(result.stdout + result.stderr)
