"""make_unseen_dataset.py: the default set is the committed data/unseen, pixel for pixel, in the
layout of data/textures with non-empty binary masks; make_pretrain_set.py draws none of its
classes and records a licence for every photograph it uses."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("skimage")
pytest.importorskip("scipy")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
COMMITTED = os.path.join(ROOT, "data", "unseen")
CLASSES = ("knit", "granite", "perforated")
DEFECTS = ("scratch", "stain", "paste", "hole")


def run(script, *args):
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, script), *args], capture_output=True, text=True)


def files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def pixels(path):
    return np.asarray(Image.open(path))


def test_default_set_is_the_committed_one(tmp_path):
    r = run("make_unseen_dataset.py", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    made = files(tmp_path)
    assert made == [f for f in files(COMMITTED) if f != "README.md"]
    for f in made:
        assert np.array_equal(pixels(tmp_path / f), pixels(os.path.join(COMMITTED, f))), f


def test_layout_and_masks():
    for c in CLASSES:
        base = os.path.join(COMMITTED, c)
        assert len(os.listdir(os.path.join(base, "train", "good"))) == 200
        assert len(os.listdir(os.path.join(base, "validation", "good"))) == 40
        assert len(os.listdir(os.path.join(base, "test", "good"))) == 8
        for d in DEFECTS:
            imgs = sorted(os.listdir(os.path.join(base, "test", d)))
            masks = sorted(os.listdir(os.path.join(base, "ground_truth", d)))
            assert len(imgs) == 4 and masks == [i.replace(".png", "_mask.png") for i in imgs]
            for m in masks:
                a = pixels(os.path.join(base, "ground_truth", d, m))
                assert a.shape == (128, 128) and set(np.unique(a)) <= {0, 255} and (a == 255).sum() >= 20
        a = Image.open(os.path.join(base, "train", "good", "000.png"))
        assert a.mode == "L" and a.size == (128, 128)
    # every train crop is distinct, and none is a validation crop
    for c in CLASSES:
        seen = set()
        for part in ("train/good", "validation/good"):
            for f in files(os.path.join(COMMITTED, c, part)):
                b = pixels(os.path.join(COMMITTED, c, part, f)).tobytes()
                assert b not in seen
                seen.add(b)


def test_pretrain_set_holds_out_the_unseen_classes(tmp_path):
    sys.path.insert(0, SCRIPTS)
    import make_pretrain_set as mps

    assert set(mps.HELD_OUT) == set(CLASSES)
    assert not set(mps.GENERATORS) & set(CLASSES)
    src = open(os.path.join(SCRIPTS, "make_pretrain_set.py")).read()
    assert "import make_unseen_dataset" not in src and "from make_unseen_dataset" not in src
    r = run("make_pretrain_set.py", "--out", str(tmp_path), "--scale", "0.01")
    assert r.returncode == 0, r.stderr
    man = json.load(open(tmp_path / "manifest.json"))
    folders = sorted(os.listdir(tmp_path))
    assert not any(c in f for f in folders for c in CLASSES)
    assert man["held_out"] == list(mps.HELD_OUT)
    assert man["total"] == sum(len(os.listdir(tmp_path / f)) for f in folders if f != "manifest.json")
    for name, p in man["photos"].items():
        assert p["licence"] in ("CC0", "public domain", "no known copyright restrictions"), name
        assert p["statement"]
    # the data/textures classes only from their train region (rows 0..299, columns 0..383)
    for c in ("brick", "grass", "gravel"):
        assert man["photos"]["skimage-" + c]["region_rows_cols"] == [0, 300, 0, 384]
    for f in folders:
        if f == "manifest.json":
            continue
        for png in os.listdir(tmp_path / f):
            im = Image.open(tmp_path / f / png)
            assert im.size == (64, 64) and im.mode in ("L", "RGB")


def test_pretrain_set_is_reproducible(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        r = run("make_pretrain_set.py", "--out", str(d), "--scale", "0.005", "--seed", "5")
        assert r.returncode == 0, r.stderr
    assert files(a) == files(b)
    for f in files(a):
        if f.endswith(".png"):
            assert np.array_equal(pixels(a / f), pixels(b / f)), f
