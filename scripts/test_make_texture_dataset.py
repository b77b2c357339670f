"""make_texture_dataset.py: the default set is the committed data/textures, pixel for pixel, and
--test-repeat K makes K times the test crops, none of them a crop of the default test set."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("skimage")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "make_texture_dataset.py")
COMMITTED = os.path.join(ROOT, "data", "textures")


def make(out, *args):
    return subprocess.run([sys.executable, SCRIPT, "--out", str(out), *args], capture_output=True, text=True)


def files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def pixels(path):
    return np.asarray(Image.open(path)).tobytes()


def same_pixels(a, b, names):
    return all(pixels(os.path.join(a, n)) == pixels(os.path.join(b, n)) for n in names)


def test_default_set_is_the_committed_one(tmp_path):
    assert make(tmp_path).returncode == 0
    made = files(tmp_path)
    assert made == [f for f in files(COMMITTED) if f != "README.md"]
    assert same_pixels(tmp_path, COMMITTED, made)


def test_test_repeat_makes_more_and_other_test_crops(tmp_path):
    r = make(tmp_path, "--test-repeat", "2")
    assert r.returncode == 0, r.stderr
    for c in ("brick", "grass", "gravel"):
        assert len(os.listdir(tmp_path / c / "test" / "good")) == 16
        for d in ("scratch", "stain", "paste", "hole"):
            assert len(os.listdir(tmp_path / c / "test" / d)) == 8
            assert len(os.listdir(tmp_path / c / "ground_truth" / d)) == 8
        # train and validation are the committed ones; no test crop repeats a committed one
        for part in ("train/good", "validation/good"):
            assert same_pixels(tmp_path / c / part, os.path.join(COMMITTED, c, part), os.listdir(tmp_path / c / part))
        committed = {pixels(os.path.join(COMMITTED, c, f)) for f in files(os.path.join(COMMITTED, c)) if f.startswith("test")}
        made = [pixels(os.path.join(tmp_path, c, f)) for f in files(tmp_path / c) if f.startswith("test")]
        assert not committed.intersection(made)


def test_test_repeat_below_one_is_refused(tmp_path):
    r = make(tmp_path, "--test-repeat", "0")
    assert r.returncode == 2
    assert "--test-repeat: expected an integer >= 1, got 0" in r.stderr
