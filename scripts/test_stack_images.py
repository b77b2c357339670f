"""scripts/stack_images.py: strips stacked top to bottom, 4 px apart, left-aligned; a bad file is one line."""
import subprocess
import sys
from pathlib import Path

import pytest

PIL = pytest.importorskip("PIL.Image")
SCRIPT = Path(__file__).with_name("stack_images.py")


def test_stacks_strips_in_order(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    PIL.new("RGB", (10, 3), (255, 0, 0)).save(a)
    PIL.new("RGB", (6, 5), (0, 255, 0)).save(b)
    out = tmp_path / "out.png"
    subprocess.run([sys.executable, SCRIPT, out, a, b], check=True, capture_output=True)
    img = PIL.open(out).convert("RGB")
    assert img.size == (10, 3 + 4 + 5)
    assert img.getpixel((0, 0)) == (255, 0, 0)
    assert img.getpixel((0, 7)) == (0, 255, 0)
    assert img.getpixel((8, 8)) == (0, 0, 0)  # right of the narrower strip
    assert img.getpixel((0, 4)) == (0, 0, 0)  # the gap


def test_unreadable_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not a png")
    r = subprocess.run([sys.executable, SCRIPT, tmp_path / "o.png", bad], capture_output=True, text=True)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "bad.png: cannot read" in r.stderr
