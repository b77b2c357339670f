#!/usr/bin/env python3
"""Preprocessing goldens for the Rust image loading: PIL resize and PIL mode conversion.

    python3 scripts/resize_golden.py [--out tests/golden/preprocess] [--seed 11]

GLAD's dataset (dataset/dataset.py) loads a test image as
    Image.open(p) -> exif_transpose -> .convert("RGB") if mode != "RGB"
    -> transforms.Resize((R, R), BILINEAR)   (PIL: img.resize((R, R), Image.BILINEAR))
    -> ToTensor (uint8 / 255 in float32, HWC -> CHW) -> Normalize(0.5, 0.5)
so the tensor is ((v / 255) - 0.5) / 0.5, each operation in float32.

Writes (all arrays .npy, little-endian):
- input.png      200x150 (W x H) RGB: gradients, a fine checkerboard, sharp disks, noise;
  expected.npy   [3,128,128] float32: PIL resize to 128x128 BILINEAR, then the formula;
  expected_u8.npy [128,128,3] uint8: the PIL resize itself (before the formula).
- input_up.png   90x60 RGB (an upscale in both axes), expected_up.npy, expected_up_u8.npy.
- gray16.png     24x16 16-bit grayscale (PIL mode I;16), values 0..65535 including some
  below 256; gray16_rgb.npy [16,24,3] uint8 = PIL .convert("RGB"): Pillow CLAMPS 16-bit
  values to 0..255, it does not scale them (1000 -> 255, 200 -> 200).
- rgba.png       20x12 RGBA with varying alpha (including alpha 0 over non-black colour);
  rgba_rgb.npy   [12,20,3] uint8 = .convert("RGB"): alpha is dropped, not composited.
- gray8.png (mode L) and palette.png (mode P, 8 colours) with gray8_rgb.npy and
  palette_rgb.npy, .convert("RGB") likewise.
- exif_orient6.png 24x16 RGB stored with an eXIf chunk, Orientation = 6 (rotate 90 CW to
  display); exif_orient6_rgb.npy [24,16,3] uint8 = ImageOps.exif_transpose(im).convert("RGB").
"""
import argparse
import os

import numpy as np
from PIL import Image, ImageOps

F32 = np.float32


def normalise_chw(u8_hwc):
    x = u8_hwc.astype(F32) / F32(255)  # ToTensor: float32 division
    x = (x - F32(0.5)) / F32(0.5)  # Normalize(mean 0.5, std 0.5), float32
    return np.ascontiguousarray(x.transpose(2, 0, 1)).astype(F32)


def test_image(rng, w, h):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 255 * xx / (w - 1)
    g = 255 * yy / (h - 1)
    b = 127.5 + 127.5 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    img = np.stack([r, g, b], -1)
    # fine checkerboard in the top-left quarter (aliasing check)
    cb = ((xx.astype(int) // 2 + yy.astype(int) // 2) % 2 == 0) & (xx < w / 2) & (yy < h / 2)
    img[cb] = [240, 20, 120]
    # sharp disks
    for cx, cy, rad, col in [(0.7 * w, 0.3 * h, 0.12 * h, [10, 200, 30]),
                             (0.3 * w, 0.75 * h, 0.15 * h, [250, 250, 5])]:
        img[(xx - cx) ** 2 + (yy - cy) ** 2 <= rad ** 2] = col
    img += rng.normal(0, 12, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/golden/preprocess")
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    out = args.out
    os.makedirs(out, exist_ok=True)

    for name, (w, h) in [("", (200, 150)), ("_up", (90, 60))]:
        a = test_image(rng, w, h)
        Image.fromarray(a, "RGB").save(os.path.join(out, f"input{name}.png"))
        im = Image.open(os.path.join(out, f"input{name}.png"))
        im = ImageOps.exif_transpose(im)
        assert im.mode == "RGB" and im.size == (w, h)
        r = np.asarray(im.resize((128, 128), Image.BILINEAR))
        np.save(os.path.join(out, f"expected{name}_u8.npy"), r)
        np.save(os.path.join(out, f"expected{name}.npy"), normalise_chw(r))
        print(f"input{name}.png {w}x{h} -> expected{name}.npy {normalise_chw(r).shape}")

    # 16-bit grayscale
    v = np.linspace(0, 65535, 24 * 16).reshape(16, 24)
    v[0, :12] = np.arange(0, 12 * 23, 23)  # some values below 256
    v[1, :6] = [255, 256, 257, 300, 1000, 65280]
    g16 = np.rint(v).astype(np.uint16)
    Image.fromarray(g16).save(os.path.join(out, "gray16.png"))

    # RGBA
    rgba = rng.integers(0, 256, (12, 20, 4), dtype=np.uint8)
    rgba[:, :5, 3] = 0
    rgba[:, 5:10, 3] = 255
    Image.fromarray(rgba, "RGBA").save(os.path.join(out, "rgba.png"))

    # 8-bit gray and palette
    Image.fromarray(rng.integers(0, 256, (10, 14), dtype=np.uint8), "L").save(
        os.path.join(out, "gray8.png"))
    pal = Image.fromarray(rng.integers(0, 8, (10, 14), dtype=np.uint8), "P")
    colours = rng.integers(0, 256, (8, 3), dtype=np.uint8)
    pal.putpalette(colours.ravel().tolist())
    pal.save(os.path.join(out, "palette.png"))

    # EXIF orientation 6 in a PNG eXIf chunk
    a = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    a[:4, :4] = [255, 0, 0]  # marker in the stored top-left corner
    im = Image.fromarray(a, "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(os.path.join(out, "exif_orient6.png"), exif=exif.tobytes())

    for f, transpose in [("gray16", False), ("rgba", False), ("gray8", False), ("palette", False),
                         ("exif_orient6", True)]:
        im = Image.open(os.path.join(out, f + ".png"))
        mode = im.mode
        if transpose:
            assert im.getexif().get(0x0112) == 6
            im = ImageOps.exif_transpose(im)
        rgb = np.asarray(im.convert("RGB"))
        np.save(os.path.join(out, f + "_rgb.npy"), rgb)
        print(f"{f}.png mode {mode} -> {f}_rgb.npy {rgb.shape} {rgb.dtype}")


if __name__ == "__main__":
    main()
