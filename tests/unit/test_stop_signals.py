"""The stop flag: the first signal only sets it, a duplicate delivery is ignored, a later second one aborts."""

import os
import signal
import subprocess
import sys
import time

from launch.signals import StopFlag


def test_first_signal_sets_the_flag_and_a_duplicate_is_ignored():
    flag = StopFlag()
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)}
    try:
        flag.install()
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR2)  # the same signal along a second path, at once
        time.sleep(0.05)
        assert flag.requested and flag.signum == signal.SIGUSR2
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_a_later_second_signal_aborts_at_once():
    code = (
        "import os, signal, time\nfrom launch.signals import StopFlag\n"
        "StopFlag().install()\nos.kill(os.getpid(), signal.SIGUSR1)\ntime.sleep(1.5)\n"
        "os.kill(os.getpid(), signal.SIGUSR1)\ntime.sleep(5)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=30).returncode == 128 + signal.SIGUSR1
