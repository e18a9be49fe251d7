"""The remote checkpoint tier against a real S3 endpoint on loopback (moto's server): upload with the
marker written last, retention on the store, and downloads verified before they get a name."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from orchestrator.checkpoint.spec import CheckpointSpec, RemoteSpec
from orchestrator.errors import CheckpointError, RecipeError, ResumeError, SlurmError
from orchestrator.shared.checkpoint import store
from orchestrator.shared.checkpoint.remote import MARKER, RemoteTier
from orchestrator.shared.checkpoint.upload import BackgroundUploader
from orchestrator.recipe.loader import load_recipe
from orchestrator.rundir.checkpoint_records import RunSummary, write_summary
from orchestrator.rundir.layout import RunDir
from orchestrator.starting.local import LocalRunRequest, RunComplete, plan_local_run
from orchestrator.starting.remote_resume import check_remote_env, fetch_remote_checkpoint, upload_if_newer
from orchestrator.plan.planner import make_plan
from orchestrator.slurm.submit import submit_chain
from tests.helpers.planning import make_env, write_plan
from tests.helpers.project import ROOT, TINY
from tests.helpers.object_store import CREDENTIALS, object_store


@pytest.fixture(scope="module")
def s3():
    with object_store() as endpoint:
        yield endpoint


@pytest.fixture
def tier(s3, request):
    bucket = s3.bucket(re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:50].strip("-"))
    return RemoteTier(f"{bucket}/run-a", s3.options())


def make_checkpoint(root, step, payload=b"weights"):
    staging = root / f"{store.STAGING_PREFIX}{store.tag_for(step)}"
    (staging / "sub").mkdir(parents=True)
    (staging / "shard.pt").write_bytes(payload * 1000 + bytes([step]))
    (staging / "sub" / "rank.pt").write_bytes(bytes([step]) * 10)
    files = store.describe_files(staging, ["shard.pt", "sub/rank.pt"])
    return store.commit(root, staging, step, files, {"world_size": 2})


def test_no_remote_leaves_the_recorded_section_as_it_was():
    assert not {"remote", "local_dir"} & set(CheckpointSpec().model_dump(mode="json"))
    spec = CheckpointSpec(remote="s3://bucket/run-a/")
    assert spec.remote.url == "s3://bucket/run-a" and spec.model_dump(mode="json")["remote"]["url"] == "s3://bucket/run-a"


@pytest.mark.parametrize("remote, says", [
    ("bucket/run", "is not a URL"),
    ("nosuchstore://bucket/run", "nosuchstore:// is no storage fsspec knows"),
    ("s3://AKIA:secret@bucket/run", "credentials"),
    ({"url": "s3://b/r", "options": {"secret": "x"}}, "credentials go by environment variable name"),
    ({"url": "s3://b/r", "env": ["AWS KEY"]}, "an environment variable's name"),
])
def test_a_remote_the_run_could_not_use_is_refused(remote, says):
    with pytest.raises(ValueError, match=says):
        CheckpointSpec(remote=remote)


def test_an_upload_commits_last_and_downloads_verified(tier, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "local", 4)
    sent = tier.upload(checkpoint)
    assert sent == sum(e.bytes for e in store.read_manifest(checkpoint).files.values())
    assert tier.committed_tags() == ["step-00000004"]
    marker = json.loads(tier.fs.cat_file(f"{tier.root}/step-00000004/{MARKER}"))
    assert marker["content_hash"] == store.content_hash(store.read_manifest(checkpoint))
    fetched, refused = tier.fetch_newest(tmp_path / "fresh")
    assert refused == [] and fetched.path == tmp_path / "fresh" / "step-00000004" and fetched.bytes == sent
    assert store.verify(fetched.path).ok and (fetched.path / "sub" / "rank.pt").read_bytes() == bytes([4]) * 10


def test_a_half_uploaded_checkpoint_is_never_taken(tier, tmp_path):
    tier.upload(make_checkpoint(tmp_path / "local", 4))
    newer = make_checkpoint(tmp_path / "local", 8)
    tier.upload(newer)
    tier.fs.rm_file(f"{tier.root}/step-00000008/{MARKER}")  # killed before its marker
    assert tier.tags() == ["step-00000008", "step-00000004"] and tier.committed_tags() == ["step-00000004"]
    fetched, refused = tier.fetch_newest(tmp_path / "fresh")
    assert fetched.path.name == "step-00000004" and refused == []
    assert not (tmp_path / "fresh" / "step-00000008").exists()


@pytest.mark.parametrize("tamper, reason", [
    ("flip", "shard.pt does not match its content hash"),
    ("grow", "shard.pt is 7002 bytes on the store, the manifest says 7001"),
    ("manifest", "its manifest is not the one its upload committed"),
])
def test_a_tampered_remote_checkpoint_is_refused_in_one_line(tier, tmp_path, tamper, reason):
    checkpoint = make_checkpoint(tmp_path / "local", 4)
    tier.upload(checkpoint)
    shard = f"{tier.root}/step-00000004/shard.pt"
    data = bytearray(tier.fs.cat_file(shard))
    if tamper == "flip":
        data[0] ^= 0xFF
        tier.fs.pipe_file(shard, bytes(data))
    elif tamper == "grow":
        tier.fs.pipe_file(shard, bytes(data) + b"!")
    else:
        manifest = json.loads((checkpoint / store.MANIFEST).read_text())
        manifest["files"]["shard.pt"]["xxh3_128"] = "0" * 32
        tier.fs.pipe_file(f"{tier.root}/step-00000004/{store.MANIFEST}", json.dumps(manifest).encode())
    root = tmp_path / "fresh"
    with pytest.raises(CheckpointError) as refused:
        tier.fetch(tier.committed_tags()[0], root)
    line = str(refused.value)
    assert "\n" not in line and reason in line and line.startswith(f"{tier.url}/step-00000004")
    assert list(root.iterdir()) == []  # nothing of it stays, nothing of it was unpickled
    assert tier.fetch_newest(root) == (None, [line])


def test_retention_on_the_store_is_its_own(tier, tmp_path):
    local = tmp_path / "local"
    for step in (2, 4, 6, 8):
        tier.upload(make_checkpoint(local, step))
    tier.upload(make_checkpoint(local, 9))
    tier.fs.rm_file(f"{tier.root}/step-00000009/{MARKER}")  # an interrupted upload, older than the next commit
    tier.upload(make_checkpoint(local, 10))
    removed = tier.prune(keep_last=2, keep_every=4, protect="step-00000010")
    assert sorted(removed) == ["step-00000002", "step-00000006", "step-00000009"]
    assert tier.tags() == ["step-00000010", "step-00000008", "step-00000004"]


def test_the_background_uploader_reports_and_supersedes(s3, tmp_path):
    url = s3.bucket("uploader") + "/run-a"
    events = []
    uploader = BackgroundUploader(RemoteSpec(url=url, options=s3.options(), keep_last=1), events.append)
    local = tmp_path / "local"
    for step in (2, 4, 6):
        uploader.submit(make_checkpoint(local, step))
    uploader.close()
    uploaded = [e for e in events if e.event == "checkpoint_uploaded"]
    assert uploaded[-1].step == 6 and uploaded[-1].tries == 1 and uploaded[-1].bytes > 7000
    assert all(e.reason.startswith("superseded by") for e in events if e.event == "checkpoint_upload_failed")
    assert {e.step for e in events} == {2, 4, 6}
    assert RemoteTier(url, s3.options()).committed_tags() == ["step-00000006"]


def test_an_upload_that_keeps_failing_is_reported_and_never_marked(s3, tmp_path):
    events = []
    spec = RemoteSpec(url="s3://no-such-bucket/run-a", options=s3.options(), retries=2)
    uploader = BackgroundUploader(spec, events.append, backoff_s=0.01)
    uploader.submit(make_checkpoint(tmp_path, 4))
    uploader.close()
    (failed,) = events
    assert failed.event == "checkpoint_upload_failed" and failed.tries == 3 and failed.step == 4
    assert "\n" not in failed.reason and not any(value in failed.reason for value in CREDENTIALS.values() if len(value) > 9)


def test_orch_run_takes_the_store_only_when_local_has_nothing_and_says_why_not(tier, tmp_path):
    spec = RemoteSpec(url=tier.url, options={"endpoint_url": tier.fs.endpoint_url})
    said = []
    with pytest.raises(ResumeError, match=f"--resume {tier.url}: no committed checkpoint there"):
        fetch_remote_checkpoint(spec, tier.url, tmp_path / "run" / "checkpoints", said.append)
    assert not fetch_remote_checkpoint(spec, None, tmp_path / "run" / "checkpoints", said.append)  # the recipe's store, empty: a fresh start
    tier.upload(make_checkpoint(tmp_path / "elsewhere", 8))
    assert fetch_remote_checkpoint(spec, tier.url, tmp_path / "fresh", said.append)
    assert said[0].startswith(f"fetched step-00000008 from {tier.url}") and store.verify(tmp_path / "fresh" / "step-00000008").ok
    tier.fs.pipe_file(f"{tier.root}/step-00000008/shard.pt", b"x" * 7001)
    with pytest.raises(ResumeError, match="no checkpoint on .* verifies"):
        fetch_remote_checkpoint(spec, None, tmp_path / "empty", said.append)
    assert "shard.pt does not match its content hash" in said[-1]


def remote_overrides(tier):
    return [f"checkpoint.remote.url={tier.url}", f"checkpoint.remote.options.endpoint_url={tier.fs.endpoint_url}"]


def saved(loaded, root, step):
    """A checkpoint of this very recipe, as the ranks commit one."""
    staging = root / f"{store.STAGING_PREFIX}{store.tag_for(step)}"
    staging.mkdir(parents=True)
    (staging / "shard.pt").write_bytes(bytes([step]) * 100)
    meta = {"recipe": loaded.recipe.model_dump(mode="json"), "recipe_hash": loaded.hash, "world_size": 2}
    return store.commit(root, staging, step, store.describe_files(staging, ["shard.pt"]), meta)


def test_orch_run_resumes_a_local_checkpoint_first_and_the_stores_newest_on_an_empty_run_directory(tier, tmp_path):
    overrides = remote_overrides(tier)
    loaded = load_recipe(TINY, overrides)
    tier.upload(saved(loaded, tmp_path / "elsewhere", 8))
    for run_dir, expected in ((tmp_path / "has-step-4", 4), (tmp_path / "empty", 8)):
        if expected == 4:
            write_plan(run_dir)
            saved(loaded, run_dir / "checkpoints", 4)
        said = []
        _, plan, attempt = plan_local_run(LocalRunRequest(recipe=TINY, overrides=overrides, run_dir=run_dir), said.append)
        attempt.close()
        assert f"resuming after step {expected}" in said[-1]
        assert any(line.startswith(f"fetched step-00000008 from {tier.url}") for line in said) == (expected == 8)


def test_a_complete_run_whose_last_upload_was_killed_uploads_it_before_saying_so(tier, tmp_path):
    """The final checkpoint's upload died with the run: `orch run` launches nothing for a complete run,
    so it sends the checkpoint itself, marker last, before it reports the run complete."""
    overrides = remote_overrides(tier)
    loaded = load_recipe(TINY, overrides)
    steps, run_dir = loaded.recipe.train.steps, tmp_path / "run"
    write_plan(run_dir)
    tier.upload(saved(loaded, run_dir / "checkpoints", 2))
    saved(loaded, run_dir / "checkpoints", steps)
    tier.fs.pipe_file(f"{tier.root}/{store.tag_for(steps)}/shard.pt", b"half")  # where the kill left it: no marker
    write_summary(RunDir(run_dir), RunSummary(status="completed", steps=steps))
    said = []
    with pytest.raises(RunComplete):
        plan_local_run(LocalRunRequest(recipe=TINY, overrides=overrides, run_dir=run_dir, stop_if_complete=True), said.append)
    assert tier.committed_tags()[0] == store.tag_for(steps)
    assert tier.fetch(store.tag_for(steps), tmp_path / "fresh").bytes == 100
    (uploaded,) = [e for e in RunDir(run_dir).history() if e.event == "checkpoint_uploaded"]
    assert uploaded.step == steps and said[-2] == uploaded.describe() and "complete" in said[-1]
    said.clear()
    with pytest.raises(RunComplete):  # the store has it now: nothing more is sent
        plan_local_run(LocalRunRequest(recipe=TINY, overrides=overrides, run_dir=run_dir, stop_if_complete=True), said.append)
    assert len(said) == 1 and len([e for e in RunDir(run_dir).history() if e.event == "checkpoint_uploaded"]) == 1


def test_the_credentials_named_must_be_set_before_a_run_starts():
    spec = RemoteSpec(url="s3://b/r", env=["AWS_ACCESS_KEY_ID", "ORCH_TEST_UNSET_SECRET"])
    with pytest.raises(ResumeError, match="checkpoint.remote.env names ORCH_TEST_UNSET_SECRET, not set here"):
        check_remote_env(spec, {"AWS_ACCESS_KEY_ID": "x"})
    check_remote_env(spec, {"AWS_ACCESS_KEY_ID": "x", "ORCH_TEST_UNSET_SECRET": "y"})
    check_remote_env(None, {})


def test_local_retention_leaves_alone_what_an_upload_still_reads(tmp_path):
    old, uploading, newest = (make_checkpoint(tmp_path, step) for step in (2, 4, 6))
    removed = store.prune(tmp_path, keep_last=1, keep_every=None, protect={newest, uploading})
    assert removed == [old] and [p.name for p in store.committed(tmp_path)] == ["step-00000006", "step-00000004"]


STALLED_UPLOAD = """
import sys, threading
from pathlib import Path
import s3fs
from orchestrator.checkpoint.spec import RemoteSpec
from orchestrator.shared.checkpoint.upload import BackgroundUploader

put, sent = s3fs.S3FileSystem.put_file, []
def stalled(self, lpath, rpath, **kwargs):  # the network stalls after the first file: the test kills here
    if sent:
        threading.Event().wait()
    put(self, lpath, rpath, **kwargs)
    sent.append(rpath)
s3fs.S3FileSystem.put_file = stalled
uploader = BackgroundUploader(RemoteSpec(url=sys.argv[1], options={"endpoint_url": sys.argv[2]}), print)
uploader.submit(Path(sys.argv[3]))
uploader.close()
"""


def test_an_upload_sigkilled_midway_leaves_no_marker_and_a_resume_takes_the_one_before(tier, tmp_path):
    """Rank 0's uploader in a process of its own, SIGKILLed once the checkpoint's first file is on the
    store: the tag is there without its marker, no resume takes it, and the next orch run sends it whole."""
    local = tmp_path / "local"
    tier.upload(make_checkpoint(local, 4))
    newer = make_checkpoint(local, 8)
    endpoint = tier.fs.endpoint_url
    uploader = subprocess.Popen([sys.executable, "-c", STALLED_UPLOAD, tier.url, endpoint, str(newer)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    give_up = time.monotonic() + 120  # a hang guard, not a timing: the first file lands in about a second
    try:
        while "shard.pt" not in tier._sizes("step-00000008"):
            assert uploader.poll() is None, uploader.communicate()[0].decode()
            assert time.monotonic() < give_up, "the uploader sent no file"
            time.sleep(0.05)
    finally:
        os.kill(uploader.pid, signal.SIGKILL)
        uploader.wait()
    assert tier.tags() == ["step-00000008", "step-00000004"] and tier.committed_tags() == ["step-00000004"]
    spec = RemoteSpec(url=tier.url, options={"endpoint_url": endpoint})
    said = []
    assert fetch_remote_checkpoint(spec, None, tmp_path / "fresh", said.append)
    assert said[0].startswith(f"fetched step-00000004 from {tier.url}") and [p.name for p in store.committed(tmp_path / "fresh")] == ["step-00000004"]
    upload_if_newer(spec, newer, tmp_path / "events.jsonl", said.append)
    assert tier.committed_tags() == ["step-00000008", "step-00000004"] and store.verify(tier.fetch("step-00000008", tmp_path / "again").path).ok


@pytest.mark.parametrize("section, says", [
    ({"local_dir": "/dev/shm/runs"}, "set checkpoint.remote too"),
    ({"local_dir": "/dev/shm/runs", "remote": "s3://b/r", "dir": "/scratch/c"}, "not both"),
    ({"local_dir": "/dev/shm/runs", "remote": "s3://b/r", "keep_every": 100}, "checkpoint.remote.keep_every"),
])
def test_a_local_tier_the_run_could_lose_checkpoints_in_is_refused(section, says):
    with pytest.raises(ValueError, match=says):
        CheckpointSpec(**section)


def test_the_local_tier_holds_a_runs_own_checkpoints_and_takes_the_stores_newest_when_empty(tier, tmp_path):
    shm = tmp_path / "shm"
    overrides = [*remote_overrides(tier), f"checkpoint.local_dir={shm}", "checkpoint.keep_last=1"]
    loaded = load_recipe(TINY, overrides)
    tier.upload(saved(loaded, tmp_path / "elsewhere", 8))
    said = []
    _, plan, attempt = plan_local_run(LocalRunRequest(recipe=TINY, overrides=overrides, run_dir=tmp_path / "run"), said.append)
    attempt.close()
    assert plan.checkpoint_dir.parent == shm and plan.checkpoint_dir.name.startswith("run-")
    assert [p.name for p in store.committed(plan.checkpoint_dir)] == ["step-00000008"] and "resuming after step 8" in said[-1]
    other = make_plan(loaded, make_env(tmp_path), run_dir=tmp_path / "b" / "run")
    assert other.checkpoint_dir.parent == shm and other.checkpoint_dir != plan.checkpoint_dir
    said.clear()  # --fresh: the old run's node-local checkpoints go aside with it, or the new run would resume them
    _, fresh, attempt = plan_local_run(LocalRunRequest(recipe=TINY, overrides=overrides, run_dir=tmp_path / "run", fresh=True), said.append)
    attempt.close()
    assert "set aside its node-local checkpoints" in said[1] and store.committed(fresh.checkpoint_dir) == []
    with pytest.raises(RecipeError, match="checkpoint.local_dir: is node-local, and a run on 2 nodes"):
        make_plan(load_recipe(TINY, [*overrides, "distributed.nodes=2"]), make_env(tmp_path))
    with pytest.raises(SlurmError, match="checkpoint.local_dir is for orch run"):
        submit_chain(plan, "python", [], ("train", ""), [])
