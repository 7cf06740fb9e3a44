"""Run the rules state machine for as long as one likes (CI runs a small fixed budget).

    .venv/bin/python -m bench.rules_soak --examples 2000 --steps 50

Needs what the test suite needs (PostgreSQL at TEST_DATABASE_URL, Redis at TEST_REDIS_URL).
Prints pytest's verdict; on a failure, the shortest sequence of steps Hypothesis found.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from bench.common import ROOT


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=1000, help="sequences to run")
    parser.add_argument("--steps", type=int, default=50, help="steps per sequence")
    parser.add_argument("--random", action="store_true",
                        help="a new random exploration each run (default: derandomized)")
    args = parser.parse_args()
    env = {**os.environ, "SONICUS_ENV": "testing", "RULES_EXAMPLES": str(args.examples),
           "RULES_STEPS": str(args.steps)}
    if args.random:
        env["RULES_RANDOM"] = "1"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:logging", "--tb=short",
                             "tests/test_rules_state_machine.py"], cwd=ROOT, env=env)
    print(f"{args.examples} sequences of up to {args.steps} steps in "
          f"{time.monotonic() - started:.0f} s")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
