"""`make test`: the whole suite, then the API suite again in the other two profiles.

1. everything (unit, contract, chart, integration, e2e) in the embedded profile;
2. the API suite (tests/e2e) against MongoDB/S3/NATS test servers (cluster profile);
3. the API suite with the router calling a KServe predictor process (predictor profile).

Most of the suite waits on servers it started (a render, a restart, a lease running
out), not on the CPU, so the runs go in three lanes side by side: the embedded
end-to-end tests; the embedded unit, contract, integration and chart tests; the cluster
then the predictor profile. Tests marked `quiet` measure the server's memory and how
fast `/health` answers under an attack; the other lanes' load would count against them,
so they run last, one profile after another, with nothing else running. Each run is a
pytest process of its own, writing a log and a JUnit report; a run's log is printed as
it finishes and the last line adds up every run, so one line tells the story.

    TEST_PROFILES=cluster,predictor   only these profiles
    TEST_LANES=1                      one run after another (the order above)
    python -m tests.run -x -k voices  arguments are passed to every pytest run
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Run:
    profile: str
    paths: tuple[str, ...]
    name: str
    marks: str

    @property
    def title(self) -> str:
        return f"{self.profile} profile: {self.name}"

    def argv(self) -> list[str]:
        return [*self.paths, "-m", self.marks]


def _busy(profile: str, *paths: str, name: str) -> Run:
    return Run(profile, paths, name, "not quiet")


def _quiet(profile: str) -> Run:
    return Run(profile, ("tests/e2e",), "tests/e2e marked quiet, alone", "quiet")


LANES: tuple[tuple[Run, ...], ...] = (
    (_busy("embedded", "tests/e2e", name="tests/e2e"),),
    (_busy("embedded", "tests", "--ignore=tests/e2e", name="tests except tests/e2e"),),
    (
        _busy("cluster", "tests/e2e", name="tests/e2e"),
        _busy("predictor", "tests/e2e", name="tests/e2e"),
    ),
)
ALONE: tuple[Run, ...] = (_quiet("embedded"), _quiet("cluster"), _quiet("predictor"))


@dataclass
class Outcome:
    run: Run
    order: int
    code: int
    counts: tuple[int, int, int]
    seconds: float


def _counts(report: Path) -> tuple[int, int, int]:
    """(passed, failed, skipped) of a JUnit report; a missing report is one failure."""
    if not report.exists():
        return 0, 1, 0
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    tests = sum(int(s.get("tests", 0)) for s in suites)
    failed = sum(int(s.get("failures", 0)) + int(s.get("errors", 0)) for s in suites)
    skipped = sum(int(s.get("skipped", 0)) for s in suites)
    return tests - failed - skipped, failed, skipped


def _execute(run: Run, index: int, folder: Path, extra: list[str]) -> Outcome:
    """One pytest process for `run`, its output in a log file beside its report."""
    report = folder / f"{index}-{run.profile}.xml"
    log = folder / f"{index}-{run.profile}.log"
    env = dict(os.environ, COSYVOICE_TEST_PROFILE=run.profile)
    argv = [sys.executable, "-m", "pytest", *run.argv(), f"--junitxml={report}", *extra]
    started = time.monotonic()
    with log.open("wb") as out:
        code = subprocess.call(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Outcome(run, index, code, _counts(report), time.monotonic() - started)


def main() -> int:
    only = set(filter(None, os.environ.get("TEST_PROFILES", "").split(",")))
    lanes = [tuple(run for run in lane if not only or run.profile in only) for lane in LANES]
    lanes = [lane for lane in lanes if lane]
    alone = [run for run in ALONE if not only or run.profile in only]
    width = max(1, int(os.environ.get("TEST_LANES", len(lanes))))
    extra = sys.argv[1:]
    printing = threading.Lock()
    outcomes: list[Outcome] = []

    with tempfile.TemporaryDirectory() as folder:
        everything = [run for lane in lanes for run in lane] + alone
        numbered = {run: i for i, run in enumerate(everything)}

        def run_lane(lane: tuple[Run, ...]) -> None:
            for run in lane:
                outcome = _execute(run, numbered[run], Path(folder), extra)
                with printing:
                    outcomes.append(outcome)
                    log = Path(folder) / f"{numbered[run]}-{run.profile}.log"
                    print(f"\n=== {run.title} ===", flush=True)
                    sys.stdout.write(log.read_text(errors="replace").rstrip("\n") + "\n")
                    print(f"=== {run.title}: {outcome.seconds / 60:.1f} min ===", flush=True)

        print(
            f"{sum(map(len, lanes))} pytest runs in {min(width, len(lanes))} lanes, "
            f"then {len(alone)} alone",
            flush=True,
        )
        with ThreadPoolExecutor(max_workers=width) as pool:
            for done in [pool.submit(run_lane, lane) for lane in lanes]:
                done.result()
        run_lane(tuple(alone))

    totals = [sum(o.counts[i] for o in outcomes) for i in range(3)]
    passed, failed, skipped = totals
    print()
    for outcome in sorted(outcomes, key=lambda o: o.order):
        p, f, s = outcome.counts
        print(f"{outcome.run.title}: {p} passed, {f} failed, {s} skipped")
    print(f"total: {passed} passed, {failed} failed, {skipped} skipped")
    codes = [o.code for o in outcomes if o.code not in (0, 5)]
    return codes[0] if codes else (1 if failed else 0)


if __name__ == "__main__":
    raise SystemExit(main())
