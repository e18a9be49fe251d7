"""The session's cluster fixture stops what it started and leaves alone what was up before it, and its
checks find what is left running: exercised on a fake `dev-cluster.sh` whose "daemon" is a copy of
`sleep` under a name of its own (tests/helpers/cluster.py; conftest's `slurm_cluster`)."""

import os
import shutil
import subprocess
import sys

import pytest

from tests.helpers import cluster
from tests.helpers.cluster import left_running, naming, running, session_cluster

FAKE = f"orchfake{os.getpid() % 100000}"
"""The fake daemon's process name: this session's own, so no other process can pass for it."""

SCRIPT = """#!/bin/bash
# A fake slurm/dev-cluster.sh: `up` starts one daemon unless it runs, `down` stops it (unless BROKEN_DOWN).
pidfile={state}/daemon.pid
case $1 in
    up) [[ -s $pidfile ]] && kill -0 "$(<"$pidfile")" 2>/dev/null && exit 0
        {daemon} 600 >/dev/null 2>&1 </dev/null &
        echo $! >"$pidfile"
        # as the real script, return once the daemon runs (not while its fork is still called bash)
        until [[ $(cat /proc/$!/comm 2>/dev/null) == {name} ]]; do sleep 0.01; done ;;
    down) [[ -n ${{BROKEN_DOWN:-}} ]] || kill "$(<"$pidfile")" ;;
esac
"""


@pytest.fixture
def fake_cluster(tmp_path):
    daemon = tmp_path / FAKE
    shutil.copy(shutil.which("sleep"), daemon)
    script = tmp_path / "dev-cluster.sh"
    script.write_text(SCRIPT.format(state=tmp_path, daemon=daemon, name=FAKE))
    yield script
    for process in running([FAKE]):
        process.kill()


def session(script):
    return session_cluster(script, cluster=(FAKE,), started_with_it=(FAKE,))


def test_a_cluster_the_session_started_is_stopped_at_its_end(fake_cluster):
    with session(fake_cluster) as started:
        assert started and len(running([FAKE])) == 1
    assert not running([FAKE])


def test_a_cluster_that_was_up_before_is_left_alone(fake_cluster):
    subprocess.run(["bash", str(fake_cluster), "up"], check=True)
    (daemon,) = running([FAKE])
    with session(fake_cluster) as started:
        assert not started
    assert running([FAKE]) == {daemon}


def test_a_daemon_left_running_fails_the_session(fake_cluster, monkeypatch):
    monkeypatch.setenv("BROKEN_DOWN", "1")
    monkeypatch.setattr(cluster, "EXIT_WAIT_S", 0.1)
    with pytest.raises(AssertionError, match=f"left the daemons the tests started running: .*{FAKE}"):
        with session(fake_cluster):
            pass


def test_a_process_naming_the_session_directory_is_found(tmp_path, monkeypatch):
    monkeypatch.setattr(cluster, "EXIT_WAIT_S", 0.1)
    stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(tmp_path / "run")])
    try:
        assert [p.pid for p in naming(f"{tmp_path}/")] == [stray.pid]
        assert left_running(naming(f"{tmp_path}/")) == [f"{stray.pid} {sys.executable} -c import time; time.sleep(600) {tmp_path}/run"]
    finally:
        stray.kill()
        stray.wait()
    assert not naming(f"{tmp_path}/")
