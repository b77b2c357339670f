"""scripts/export_bundle.py synthetic-sd14: the published architectures at their published
sizes. Needs torch and diffusers (skipped without them, as in CI: the export dependencies are
scripts/requirements-export.txt, not requirements-ci.txt)."""
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def test_synthetic_sd14_is_a_subcommand():
    # argparse answers --help before torch work starts, but the module imports torch at the top
    pytest.importorskip("torch")
    p = subprocess.run([sys.executable, os.path.join(HERE, "export_bundle.py"), "synthetic-sd14", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "--verify-batches" in p.stdout


def test_published_parameter_counts():
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    sys.path.insert(0, HERE)
    import export_bundle as eb

    with torch.device("meta"):  # shapes only: no 3.4 GB of weights
        unet = diffusers.UNet2DConditionModel(**eb.SD14_UNET)
        vae = diffusers.AutoencoderKL(**eb.SD14_VAE)
        dino = eb.DinoViT(**eb.VITB8)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(unet) == 859_520_964  # SD v1.x UNet
    assert count(vae) == 83_653_863  # SD v1.x VAE (kl-f8)
    assert count(dino) == 85_807_872  # ViT-B/8 with its final norm, no head
    assert eb.CLIP_TOKENS == 77 and eb.CLIP_DIM == unet.config.cross_attention_dim


def test_full_takes_verify_batches():
    pytest.importorskip("torch")
    p = subprocess.run([sys.executable, os.path.join(HERE, "export_bundle.py"), "full", "--help"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "--verify-batches" in p.stdout


def test_stale_external_data_is_removed(tmp_path):
    pytest.importorskip("torch")
    sys.path.insert(0, HERE)
    import export_bundle as eb

    path = str(tmp_path / "unet.onnx")
    open(path, "wb").close()
    open(path + ".data", "wb").close()
    eb.drop_stale_external_data(path, external=True)  # still referenced: kept
    assert os.path.exists(path + ".data")
    eb.drop_stale_external_data(path, external=False)
    assert not os.path.exists(path + ".data") and os.path.exists(path)


def test_requirements_name_accelerate():
    with open(os.path.join(HERE, "requirements-export.txt")) as f:
        names = [line.split("==")[0].strip() for line in f if line.strip() and not line.startswith("#")]
    assert "accelerate" in names
