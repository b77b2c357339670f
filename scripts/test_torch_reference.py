"""scripts/torch_reference.py: the torch-model pipeline rebuilds onnx/tiny's weights from its
provenance and reproduces the committed parity case (adp_threshold: goldens made by the
numpy + onnxruntime reference) within the parity tolerances. Needs torch and diffusers
(skipped without them, as in CI)."""
import os
import sys

import numpy as np
import pytest
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CASE = os.path.join(ROOT, "tests/golden/parity/adp_threshold")
sys.path.insert(0, HERE)


def test_torch_models_reproduce_the_parity_case():
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    import glad_reference as gr
    import torch_reference as tr

    case = yaml.safe_load(open(os.path.join(CASE, "case.yaml")))
    load = lambda n: np.load(os.path.join(CASE, n)).astype(np.float32)  # noqa: E731
    bd = tr.TorchBundle(os.path.join(ROOT, "onnx/tiny"), threads=1)
    out = gr.inspect(None, load("images.npy"), load("vae_noise.npy"), load("eps.npy"), case, bundle=bd)
    assert [int(s) for s in out["adp_step"]] == case["expected"]["adp_step"]
    np.testing.assert_allclose(out["score"], load("score.npy"), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out["map"], load("map.npy"), rtol=1e-3, atol=1e-3)
    assert set(bd.ms) >= {"vae_encoder", "unet", "vae_decoder", "backbone"}


def test_a_bundle_without_seeded_provenance_is_refused(tmp_path):
    pytest.importorskip("torch")
    import torch_reference as tr

    (tmp_path / "bundle.yaml").write_text("resolution: 64\nprovenance: {weights: trained}\n")
    with pytest.raises(SystemExit, match="provenance names no"):
        tr.rebuild(str(tmp_path), yaml.safe_load((tmp_path / "bundle.yaml").read_text()))
