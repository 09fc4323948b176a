"""The ensemble names its encoder's precision and file hash, which the gateway's cache fingerprint covers."""

from __future__ import annotations

import hashlib

from google.protobuf import json_format

from tests.conftest import DEFAULT_MODEL
from triton_embeddings import contract
from triton_embeddings.export import triton_config as tc


def test_export_writes_precision_and_the_encoder_files_sha256(model_repository):
    text = (model_repository / DEFAULT_MODEL / "config.pbtxt").read_text()
    config = json_format.MessageToDict(tc.parse(text), preserving_proto_field_name=True)
    params = contract.EnsembleParams.from_config(config)
    onnx = model_repository / f"{DEFAULT_MODEL}_encoder" / "1" / contract.OnnxStepParams().onnx_file
    assert params.precision == "fp32"
    assert params.encoder_sha256 == hashlib.sha256(onnx.read_bytes()).hexdigest()
