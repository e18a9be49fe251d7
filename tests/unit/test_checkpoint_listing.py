"""`orch checkpoints` and the checkpoint choice of `orch export` on plain files (no torch)."""

import json

import pytest
from typer.testing import CliRunner

from orchestrator.shared.checkpoint import store
from orchestrator.checkpoint.export import choose_checkpoint
from orchestrator.checkpoint.listing import checkpoint_root, human_bytes, list_checkpoints, render_listing
from orchestrator.cli import app
from orchestrator.errors import CheckpointError
from tests.helpers.planning import write_plan
from tests.helpers.hostile_files import deep_chain

runner = CliRunner()


def make_checkpoint(root, step, payload=b"weights"):
    staging = root / f"{store.STAGING_PREFIX}{store.tag_for(step)}"
    staging.mkdir(parents=True)
    (staging / "zero_pp_rank_0_optim_states.pt").write_bytes(payload * step)
    (staging / "rank-0.pt").write_bytes(b"rng")
    files = store.describe_files(staging, ["zero_pp_rank_0_optim_states.pt", "rank-0.pt"])
    return store.commit(root, staging, step, files, {"world_size": 2, "zero_stage": 3, "tokens": step * 2048})


def flip(path):
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run"
    for step in (2, 4, 6):
        make_checkpoint(run / "checkpoints", step)
    return run


def test_rows_newest_first_with_manifest_figures(run_dir):
    listing = list_checkpoints(run_dir)
    assert [r.step for r in listing.checkpoints] == [6, 4, 2]
    newest = listing.checkpoints[0]
    assert newest.latest and not any(r.latest for r in listing.checkpoints[1:]) and listing.latest == "step-00000006"
    assert (newest.tokens, newest.size_bytes, newest.world_size, newest.zero_stage) == (12288, 7 * 6 + 3, 2, 3)
    assert newest.verified is True and newest.committed_at is not None
    text = render_listing(listing)
    assert "latest -> step-00000006" in text and "  * = the checkpoint `latest` points to" in text
    first_row = text.splitlines()[2]
    assert first_row.lstrip().startswith("*  step-00000006") and " 12,288 " in first_row and first_row.endswith("  yes")


def test_corrupt_checkpoint_shows_why_and_no_verify_skips_hashing(run_dir):
    flip(run_dir / "checkpoints" / "step-00000004" / "zero_pp_rank_0_optim_states.pt")
    rows = {r.step: r for r in list_checkpoints(run_dir).checkpoints}
    assert rows[4].verified is False and rows[4].reason == "zero_pp_rank_0_optim_states.pt does not match its content hash"
    assert rows[6].verified and rows[2].verified
    assert all(r.verified is None for r in list_checkpoints(run_dir, verify=False).checkpoints)
    assert "no: zero_pp_rank_0_optim_states.pt does not match" in render_listing(list_checkpoints(run_dir))
    # Listing never moves anything (resume does).
    assert not (run_dir / "checkpoints" / store.SET_ASIDE).exists()


def test_set_aside_checkpoints_are_listed_with_their_reason(run_dir):
    root = run_dir / "checkpoints"
    store.set_aside(root, root / "step-00000006", "zero_pp_rank_0_optim_states.pt does not match its content hash")
    listing = list_checkpoints(run_dir)
    assert [r.step for r in listing.checkpoints] == [4, 2]
    (aside,) = listing.set_aside
    assert aside.name.startswith("step-00000006-") and aside.reason.endswith("does not match its content hash")
    text = render_listing(listing)
    assert "set aside in" in text and aside.name in text and "does not match its content hash" in text


def test_only_set_aside_checkpoints_still_list(tmp_path):
    root = tmp_path / "run" / "checkpoints"
    store.set_aside(root, make_checkpoint(root, 2), "partial save (interrupted before commit)")
    listing = list_checkpoints(tmp_path / "run")
    assert listing.checkpoints == [] and "(no committed checkpoints)" in render_listing(listing)


def test_moved_run_finds_its_own_checkpoints(tmp_path, run_dir):
    plan = {"run_dir": "/elsewhere/run", "checkpoint_dir": "/elsewhere/run/checkpoints"}
    write_plan(run_dir, **plan)
    assert checkpoint_root(run_dir) == run_dir / "checkpoints"
    write_plan(run_dir, **{**plan, "checkpoint_dir": "/scratch/ckpt"})
    assert str(checkpoint_root(run_dir)) == "/scratch/ckpt"


def test_export_chooses_the_newest_verified_or_the_asked_step(run_dir):
    root = run_dir / "checkpoints"
    assert choose_checkpoint(root, None).name == "step-00000006"
    assert choose_checkpoint(root, 4).name == "step-00000004"
    flip(root / "step-00000006" / "rank-0.pt")
    assert choose_checkpoint(root, None).name == "step-00000004"
    with pytest.raises(CheckpointError, match="step-00000006 does not verify"):
        choose_checkpoint(root, 6)
    with pytest.raises(CheckpointError, match=r"no checkpoint of step 5 .*there are steps 6, 4, 2"):
        choose_checkpoint(root, 5)
    for step in (2, 4):
        flip(root / store.tag_for(step) / "rank-0.pt")
    with pytest.raises(CheckpointError, match="no checkpoint in .* verifies"):
        choose_checkpoint(root, None)


def test_cli_errors_are_one_line(tmp_path, run_dir):
    result = runner.invoke(app, ["checkpoints", str(run_dir)])
    assert result.exit_code == 0 and "step-00000002" in result.output
    (tmp_path / "empty").mkdir()
    for args, message in (
        (["checkpoints", str(tmp_path / "missing")], f"error: {tmp_path / 'missing'}: no such run directory"),
        (["checkpoints", str(tmp_path / "empty")], f"error: {tmp_path / 'empty'}: no checkpoints"),
        (["export", str(tmp_path / "empty")], "error: no checkpoints in"),
        (["export", str(run_dir), "--step", "3"], "error: no checkpoint of step 3"),
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 1 and result.output.startswith(message) and len(result.output.strip().splitlines()) == 1, result.output


def test_human_bytes():
    assert [human_bytes(n) for n in (None, 512, 2048, 5 * 2**20, 3 * 2**40)] == ["-", "512 B", "2.0 KiB", "5.0 MiB", "3072.0 GiB"]


def test_hostile_checkpoints_list_one_line_each(run_dir):
    """Trees deeper than Python's recursion, names with newlines and manifests edited into other
    shapes, in committed and set-aside checkpoints alike: each is one row, none a traceback."""
    root = run_dir / "checkpoints"
    store.set_aside(root, root / "step-00000006", "x\nstep-00000099  yes")
    aside = root / store.SET_ASIDE
    (aside / "named\nstep-00000098  yes").mkdir()
    manifest = json.loads((root / "step-00000002" / store.MANIFEST).read_text())
    (root / "step-00000002" / store.MANIFEST).write_text(json.dumps({**manifest, "files": {"a.pt": 3}, "tokens": "many"}))
    with deep_chain(root / "step-00000004" / "deep"), deep_chain(aside / "deep-step"):
        listing = list_checkpoints(run_dir)
        result = runner.invoke(app, ["checkpoints", str(run_dir)])
    rows = {r.step: r for r in listing.checkpoints}
    assert rows[4].verified is False and rows[4].reason.endswith("a directory more than 32 levels deep")
    assert rows[2].verified is False and rows[2].reason.startswith("unreadable manifest: a.pt has no size")
    assert {r.name for r in listing.set_aside} >= {"deep-step", "named\nstep-00000098  yes"}
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert not any(line.lstrip().startswith(("step-00000098", "step-00000099")) for line in result.output.splitlines())
    assert "'named\\nstep-00000098  yes'" in result.output and "'x\\nstep-00000099  yes'" in result.output
