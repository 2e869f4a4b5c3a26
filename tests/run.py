"""`make test`: the whole suite, then the API suite again in the other two profiles.

1. everything (unit, contract, chart, e2e) in the embedded profile;
2. the API suite (tests/e2e) against MongoDB/S3/NATS test servers (cluster profile);
3. the API suite with the router calling a KServe predictor process (predictor profile).

Each run writes a JUnit report; the last line adds them up, so one line tells the story.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

PROFILES: tuple[tuple[str, list[str]], ...] = (
    ("embedded", ["tests"]),
    ("cluster", ["tests/e2e"]),
    ("predictor", ["tests/e2e"]),
)


def _counts(report: Path) -> tuple[int, int, int]:
    if not report.exists():
        return 0, 1, 0
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    tests = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return tests - failed - skipped, failed, skipped


def main() -> int:
    only = (
        os.environ.get("TEST_PROFILES", "").split(",") if os.environ.get("TEST_PROFILES") else None
    )
    extra = sys.argv[1:]
    totals = [0, 0, 0]
    exit_code = 0
    with tempfile.TemporaryDirectory() as reports:
        for profile, paths in PROFILES:
            if only and profile not in only:
                continue
            report = Path(reports) / f"{profile}.xml"
            print(f"\n=== {profile} profile: {' '.join(paths)} ===", flush=True)
            env = dict(os.environ, COSYVOICE_TEST_PROFILE=profile)
            code = subprocess.call(
                [sys.executable, "-m", "pytest", *paths, f"--junitxml={report}", *extra], env=env
            )
            if code not in (0, 5):
                exit_code = code
            for i, n in enumerate(_counts(report)):
                totals[i] += n
    passed, failed, skipped = totals
    print(f"\ntotal: {passed} passed, {failed} failed, {skipped} skipped")
    return exit_code or (1 if failed else 0)


if __name__ == "__main__":
    raise SystemExit(main())
