"""A run on object storage, end to end: `orch run` with `checkpoint.remote` uploads every checkpoint
to a real S3 endpoint on loopback (moto's server), and `orch run --resume s3://...` on an empty run
directory continues bit-exact from the newest checkpoint committed there, never from one whose
upload did not finish."""

import pytest

from orchestrator.rundir.layout import RunDir
from orchestrator.shared.checkpoint.remote import MARKER, RemoteTier
from tests.helpers.object_store import CREDENTIALS, object_store
from tests.helpers.processes import losses, orch
from tests.helpers.project import SHORT_RUN

pytestmark = pytest.mark.distributed


def test_resume_from_the_store_on_an_empty_run_directory_is_bit_exact(tmp_path, uninterrupted):
    with object_store() as s3:
        url = s3.bucket("runs") + "/tiny-a"
        remote = [f"checkpoint.remote.url={url}", f"checkpoint.remote.options.endpoint_url={s3.endpoint_url}",
                  "checkpoint.remote.env=[AWS_ACCESS_KEY_ID,AWS_SECRET_ACCESS_KEY]"]
        trained = tmp_path / "trained"
        first = orch("run", "recipes/tiny-pretrain.yaml", *SHORT_RUN, *remote, "--run-dir", str(trained))
        assert first.returncode == 0, first.stdout + first.stderr
        uploaded = [e for e in RunDir(trained).history() if e.event == "checkpoint_uploaded"]
        assert [e.step for e in uploaded] == [4, 8, 12] and all(e.bytes > 0 and e.tries == 1 for e in uploaded)
        tier = RemoteTier(url, s3.options())
        assert tier.committed_tags() == ["step-00000012", "step-00000008", "step-00000004"]
        tier.fs.rm_file(f"{tier.root}/step-00000012/{MARKER}")  # the last upload cut short before its marker

        fresh = tmp_path / "fresh"
        second = orch("run", "recipes/tiny-pretrain.yaml", *SHORT_RUN, *remote, "--run-dir", str(fresh), "--resume", url)
        assert second.returncode == 0, second.stdout + second.stderr
        assert f"fetched step-00000008 from {url}" in second.stdout + second.stderr
    resumed = [e for e in RunDir(fresh).history() if e.event == "resumed"]
    assert [e.step for e in resumed] == [8]
    assert losses(fresh) == losses(uninterrupted())  # every per-step loss, to the last bit
    secrets = [value.encode() for value in CREDENTIALS.values() if "secret" in value or "key-id" in value]
    for run_dir in (trained, fresh):
        for path in (p for p in run_dir.rglob("*") if p.is_file()):
            assert not any(secret in path.read_bytes() for secret in secrets), path
