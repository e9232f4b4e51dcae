"""Duplicates per 100 kill -9 trials. The gateway runs as a child process against the simulated
meters and a local Mosquitto and is killed with SIGKILL at random moments (mid-poll, mid-commit,
mid-publish, mid-checkpoint), every other time with the broker down, exactly as the trials in
tests/test_delivery.py do (the same function, so the same checks: no sequence number lost, in
order within live and backlog). Prints how many readings the fleet received more than once: at
least once means a message in flight at a kill is sent again after the restart.

Prints figures only; the run stops with an AssertionError if a reading was lost.

    .venv/bin/python -m bench.kill_trials                # 100 trials, about 2-3 minutes
    .venv/bin/python -m bench.kill_trials --trials 30    # the make-test number
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from fieldgate_sim.fleet import FleetSubscriber
from fieldgate_sim.mosquitto import MosquittoBroker, mosquitto_available

from tests.harness import GatewayProcess, reading_seqs
from tests.test_delivery import kill_and_restart_cycles


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--trials", type=int, default=100)
    args = parser.parse_args(argv)
    if not mosquitto_available():
        print("mosquitto is not installed: apt-get install mosquitto (or `make mosquitto`)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="fieldgate-kill-trials-"))
    started: list[GatewayProcess] = []
    begun = time.perf_counter()
    try:
        with MosquittoBroker() as broker, FleetSubscriber(broker.port) as fleet:
            duplicates = kill_and_restart_cycles(args.trials, broker, fleet, started, work)
            seqs = reading_seqs(fleet.readings())
    finally:
        for gateway in started:
            if gateway.process is not None and gateway.process.poll() is None:
                gateway.process.kill()
                gateway.process.wait()
        shutil.rmtree(work, ignore_errors=True)
    took = time.perf_counter() - begun
    up = args.trials - args.trials // 2
    print(
        f"{args.trials} x kill -9 ({up} with the broker up, {args.trials // 2} with it down), "
        f"{took:.0f} s: {len(set(seqs))} readings numbered, none lost; {duplicates} "
        f"duplicate(s) at the fleet = {duplicates * 100 / args.trials:.1f} per 100 trials "
        f"({duplicates * 100 / max(1, len(set(seqs))):.2f}% of readings)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
