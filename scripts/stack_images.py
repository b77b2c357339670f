#!/usr/bin/env python3
"""Stacks PNG strips (e.g. `glad eval` gallery strips) top to bottom into one PNG, 4 px apart,
left-aligned on black: how docs/img/ldm64_gallery.png is made from the tuned eval galleries
(`scripts/texture_bundles.sh eval NAME`).

    python3 scripts/stack_images.py docs/img/ldm64_gallery.png \
        .work/ldm64/eval/brick/tuned/gallery/brick/stain__000.png \
        .work/ldm64/eval/brick/tuned/gallery/brick/scratch__000.png \
        .work/ldm64/eval/grass/tuned/gallery/grass/stain__000.png \
        .work/ldm64/eval/gravel/tuned/gallery/gravel/hole__000.png
"""
import argparse
import sys

from PIL import Image

GAP = 4


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="PNG to write")
    ap.add_argument("strips", nargs="+", help="PNG files, top to bottom")
    args = ap.parse_args()
    images = []
    for path in args.strips:
        try:
            images.append(Image.open(path).convert("RGB"))
        except (OSError, ValueError) as e:
            print(f"stack_images: {path}: cannot read: {e}", file=sys.stderr)
            return 1
    width = max(i.width for i in images)
    height = sum(i.height for i in images) + GAP * (len(images) - 1)
    out = Image.new("RGB", (width, height))
    y = 0
    for i in images:
        out.paste(i, (0, y))
        y += i.height + GAP
    out.save(args.out)
    print(f"{args.out}: {len(images)} strips, {width}x{height}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
