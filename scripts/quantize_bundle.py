#!/usr/bin/env python3
"""int8 copy of a bundle: ONNX Runtime's dynamic quantization (onnxruntime.quantization
.quantize_dynamic: int8 weights, activations quantized per call from their observed range) of
the UNet, the VAE encoder/decoder and the backbones; everything else (prompts, bank, scheduler,
defaults) is copied. The calibration threshold is dropped: it belongs to the float32 models
(run `glad calibrate --write-bundle` on the copy).

  python scripts/quantize_bundle.py --bundle onnx/ldm64-brick --out onnx/ldm64-brick-int8 \\
      [--roles unet,vae_encoder,vae_decoder,backbone,adp_backbone] [--ops Conv,MatMul,Gemm]

Roles not named stay float32 (copied). Weights are signed int8 (QInt8) for MatMul/Gemm, and
unsigned (QUInt8) whenever Conv is quantized, since ONNX Runtime's CPU ConvInteger takes uint8.
Needs onnx, onnxruntime and pyyaml (no torch).
"""
import argparse
import os
import shutil
import sys

import onnx
import yaml

ROLES = ("vae_encoder", "unet", "vae_decoder", "backbone", "adp_backbone")


def save(model, path):
    """Saves a model, its weights beside it (`<file>.data`) when they pass 1.5 GiB (protobuf
    stops at 2 GiB: a full-size UNet is 3.4 GB in float32). Returns whether they went there."""
    large = sum(len(t.raw_data) for t in model.graph.initializer) > 3 << 29
    onnx.save(model, path, save_as_external_data=large, location=os.path.basename(path) + ".data")
    return large


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--roles", default=",".join(ROLES), help="models to quantize (the others are copied in float32)")
    ap.add_argument("--ops", default="Conv,MatMul,Gemm", help="op types to quantize")
    a = ap.parse_args(argv)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    roles = [r for r in a.roles.split(",") if r]
    for r in roles:
        if r not in ROLES:
            sys.exit(f"--roles: unknown role `{r}` (one of {', '.join(ROLES)})")
    ops = [o for o in a.ops.split(",") if o]
    src = os.path.normpath(a.bundle)
    out = os.path.normpath(a.out)
    if os.path.abspath(src) == os.path.abspath(out):
        sys.exit("--out must differ from --bundle")
    with open(os.path.join(src, "bundle.yaml")) as f:
        m = yaml.safe_load(f)
    os.makedirs(out, exist_ok=True)
    for f in os.listdir(out):
        if f.endswith((".onnx", ".npy", ".yaml", ".data", ".bin")):
            os.remove(os.path.join(out, f))
    weight_type = QuantType.QUInt8 if "Conv" in ops else QuantType.QInt8
    for role, spec in m["models"].items():
        if spec is None or "file" not in spec:
            continue
        path = os.path.normpath(os.path.join(src, spec["file"]))
        name = f"{role}.onnx"
        dst = os.path.join(out, name)
        if role in roles:
            # load with external data, so the quantizer sees the weights
            model = onnx.load(path)
            # stale intermediate shapes (a trained UNet's) make the quantizer's shape inference fail
            del model.graph.value_info[:]
            tmp = dst + ".fp32.onnx"
            large = save(model, tmp)
            quantize_dynamic(tmp, dst, weight_type=weight_type, op_types_to_quantize=ops, use_external_data_format=large)
            os.remove(tmp)
            for extra in (tmp + ".data",):
                if os.path.exists(extra):
                    os.remove(extra)
            what = f"int8 ({weight_type.name}, {','.join(ops)})"
        else:
            save(onnx.load(path), dst)
            what = "float32 (copied)"
        spec["file"] = name
        print(f"{role:<13} {path} -> {dst} {os.path.getsize(dst) / 1e6:.2f} MB {what}")
    for f in os.listdir(src):
        p = os.path.join(src, f)
        if f.endswith(".npy"):
            shutil.copy(p, os.path.join(out, f))
        elif f == "bank" and os.path.isdir(p):
            shutil.copytree(p, os.path.join(out, "bank"), dirs_exist_ok=True)
    m["name"] = m["name"] + "-int8"
    m["description"] = m.get("description", "") + f" (int8 dynamic quantization of {', '.join(roles)}: scripts/quantize_bundle.py)"
    m.pop("calibration", None)
    with open(os.path.join(out, "bundle.yaml"), "w") as f:
        f.write(f"# int8 copy of {src} (scripts/quantize_bundle.py)\n")
        yaml.safe_dump(m, f, sort_keys=False)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
