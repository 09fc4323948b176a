"""Under CI=true no test may skip: tests/conftest.py turns a skip (a mark, a call, a fixture's, a module's)
into a failure; elsewhere a skip stays a skip."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SKIPPING = '''
import pytest


@pytest.fixture
def missing():
    pytest.skip("no such tool")


@pytest.mark.skip(reason="marked")
def test_marked():
    pass


def test_in_the_call():
    pytest.skip("called")


def test_in_a_fixture(missing):
    pass


def test_runs():
    pass


@pytest.mark.xfail(reason="expected", strict=True)
def test_expected_failure():
    raise AssertionError
'''


def _run(tmp_path: Path, ci: str, test_file: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(
        "from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport  # noqa: F401\n")
    (tmp_path / "test_skipping.py").write_text(SKIPPING)
    (tmp_path / "test_module.py").write_text("import pytest\n\npytest.skip('module', allow_module_level=True)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CI": ci}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rfsE", "-p", "no:cacheprovider", "-c", os.devnull,
                           "--rootdir", str(tmp_path), test_file], env=env, capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)


def test_a_skip_fails_under_ci(tmp_path):
    result = _run(tmp_path, "true", "test_skipping.py")
    assert result.returncode == 1 and "1 failed, 1 passed, 1 xfailed, 2 errors" in result.stdout, result.stdout
    for reason in ("no such tool", "marked", "called"):
        assert f"CI=true and it was skipped: Skipped: {reason}" in result.stdout, (reason, result.stdout)
    module = _run(tmp_path, "true", "test_module.py")
    assert module.returncode == 2, module.stdout
    assert "ERROR test_module.py - CI=true and it was skipped: Skipped: module" in module.stdout, module.stdout


def test_a_skip_stays_a_skip_elsewhere(tmp_path):
    result = _run(tmp_path, "", ".")
    assert result.returncode == 0 and "1 passed, 4 skipped, 1 xfailed" in result.stdout, result.stdout
