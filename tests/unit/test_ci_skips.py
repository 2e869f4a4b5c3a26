"""Under CI=true a test that skips for missing test data fails the run.

Each case runs a small test file in a pytest of its own (pytester) with the hook and
helper of tests/conftest.py, and reads the outcome a developer would see.
"""

from __future__ import annotations

import pytest

CONFTEST = """
from tests.conftest import pytest_runtest_makereport, skip_missing_data  # noqa: F401
"""

TESTS = """
import pytest
from tests.conftest import skip_missing_data


@pytest.fixture
def clips():
    skip_missing_data("clips not found at /nowhere")


def test_without_data():
    skip_missing_data("seed document not found at /nowhere/seed.txt")


def test_without_fixture_data(clips):
    pass


@pytest.mark.weights
def test_without_weights():
    skip_missing_data("COSYVOICE_HOME is not set")


@pytest.mark.gpu
def test_without_gpu(clips):
    pass


def test_an_ordinary_skip():
    pytest.skip("not relevant on this platform")


def test_that_passes():
    assert True
"""


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makeini(
        "[pytest]\n"
        "asyncio_default_fixture_loop_scope = function\n"
        "markers =\n    weights: real weights\n    gpu: a GPU\n"
    )
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_suite=TESTS)
    return pytester


def test_without_ci_missing_data_only_skips(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CI", raising=False)
    result = suite.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=5)
    result.stdout.fnmatch_lines(["*seed document not found at /nowhere/seed.txt*"])


@pytest.mark.parametrize("value", ["true", "TRUE", "1"])
def test_under_ci_missing_data_fails_with_the_reason(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("CI", value)
    result = suite.runpytest("-rfEs")
    # A skip in the test body fails it; a skip in a fixture is an error in its setup.
    result.assert_outcomes(passed=1, skipped=3, failed=1, errors=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(
        [
            "*FAILED*test_without_data*CI=true*seed document not found at /nowhere/seed.txt*",
            "*ERROR*test_without_fixture_data*CI=true*clips not found at /nowhere*",
        ],
        consecutive=False,
    )


def test_under_ci_weights_gpu_and_ordinary_skips_still_skip(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest("-rs", "-k", "weights or gpu or ordinary")
    result.assert_outcomes(skipped=3)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(
        [
            "*COSYVOICE_HOME is not set*",
            "*clips not found at /nowhere*",
            "*not relevant on this platform*",
        ],
        consecutive=False,
    )


def test_ci_false_is_not_ci(suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "false")
    result = suite.runpytest()
    result.assert_outcomes(passed=1, skipped=5)
