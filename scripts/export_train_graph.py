#!/usr/bin/env python3
"""Export ATP training graphs (forward + loss + reverse-mode gradients) for a bundle's UNet.

    python3 scripts/export_train_graph.py --bundle onnx/tiny --batch 2 --batch 8 [--freeze REGEX]

Starts from the bundle's INFERENCE `unet.onnx`, so it works for any bundle (tiny or full
size), and writes, inside the bundle:

  unet.onnx, unet.weights.bin  the inference UNet re-saved in external-data layout: every
                               weight tensor lives in one raw float32 little-endian file at a
                               known offset, so `train` can write trained weights as raw
                               bytes and ONNX Runtime loads the result as an ordinary model.
                               Checked: ONNX Runtime gives bit-identical outputs before/after.
  train/train_b<B>.onnx        one training graph per batch size B (static shapes: onnx-ad's
                               Conv rule needs them). Inputs: every weight (trainable and
                               frozen, in train.yaml order), sample, timestep,
                               encoder_hidden_states, target, adj_loss ([1], feed 1.0).
                               Outputs: loss = ReduceMean((noise_pred - target)^2) and
                               adj_<weight> (shape weight.shape + [1]) per trainable weight.
  train/train.yaml             graphs per batch size, latent shape, the weights in file order
                               (name, shape, byte offset and length in unet.weights.bin,
                               gradient output), the frozen ones.

How (see NOTES.md, "Training graphs with onnx-ad"): fix the batch dimension; turn every
weight initializer into a graph input BEFORE optimisation (so the optimiser cannot fold a
weight into a constant); onnxscript.optimizer.optimize (folds the shape arithmetic, rewrites
sequence ops); append the loss; strict static shape inference;
onnx_ad.reverse(m, inputs=trainable, outputs=["loss"], layout="onnx").

Which float initializers are weights: float32 tensors with more than one element, consumed
only in differentiable positions (not Resize roi/scales, Clip bounds, Pad values, ...), whose
values are not all equal (the ones/zeros scale and bias of an exported GroupNorm's
InstanceNormalization are constants, not parameters), and which are not combined with the
timestep before Sin/Cos (the sinusoidal embedding's frequency table). Names are not used: the
torch exporter's optimiser stores Linear weights transposed and GroupNorm weights reshaped as
generated `val_*` constants, which are weights all the same (in another layout, which AdamW,
being elementwise, does not mind). `--params REGEX` replaces the rule with an explicit
selection, `--constant REGEX` excludes more; `--freeze REGEX` keeps matching weights fixed
(fed as inputs, no gradient).

Needs numpy, onnx, onnxscript, onnx-ad==0.3.0, onnxruntime, pyyaml (no torch).
"""

import argparse
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time

import numpy as np
import onnx
import yaml
from onnx import TensorProto, helper, numpy_helper

WEIGHTS_FILE = "unet.weights.bin"
TRAIN_DIR = "train"
TRAIN_YAML = "train.yaml"
LOSS = "loss"
TARGET = "target"
SEED = "adj_loss"
GRAD_PREFIX = "adj_"

# Inputs (by position) through which no gradient flows, or which are configuration rather
# than data: an initializer used there is a constant, never a weight. Ops not listed are
# differentiable in every input.
NON_DIFF_INPUTS = {
    "Resize": {1, 2, 3},
    "Upsample": {1},
    "Clip": {1, 2},
    "Pad": {1, 2, 3},
    "Reshape": {1},
    "Expand": {1},
    "Tile": {1},
    "Slice": {1, 2, 3, 4},
    "Gather": {1},
    "GatherElements": {1},
    "GatherND": {1},
    "ScatterND": {1},
    "Unsqueeze": {1},
    "Squeeze": {1},
    "Split": {1},
    "ReduceMean": {1},
    "ReduceSum": {1},
    "ReduceMax": {1},
    "ReduceMin": {1},
    "ReduceProd": {1},
    "ReduceL2": {1},
    "Pow": {1},
    "Where": {0},
    "Range": {0, 1, 2},
    "ConstantOfShape": {0},
    "Shape": {0},
    "Size": {0},
    "OneHot": {0, 1, 2},
    "TopK": {1},
    "Trilu": {1},
    "CumSum": {1},
    "Dropout": {1, 2},
    "Equal": {0, 1},
    "Less": {0, 1},
    "Greater": {0, 1},
    "LessOrEqual": {0, 1},
    "GreaterOrEqual": {0, 1},
    "IsNaN": {0},
    "IsInf": {0},
    "Floor": {0},
    "Ceil": {0},
    "Round": {0},
    "Sign": {0},
    "ArgMax": {0},
    "ArgMin": {0},
    "BatchNormalization": {3, 4},
}
# Ops through which "derived from the timestep" does not propagate: the sinusoidal embedding's
# output is data for the weights that follow.
TIMESTEP_BARRIER = {"Sin", "Cos"}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def fail(msg):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(1)


# ----------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------
def consumers(graph):
    """initializer/value name -> list of (op_type, input index), over the main graph and subgraphs."""
    uses = {}

    def walk(g):
        for node in g.node:
            for i, name in enumerate(node.input):
                if name:
                    uses.setdefault(name, []).append((node.op_type, i))
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for sg in attr.graphs:
                        walk(sg)

    walk(graph)
    return uses


def timestep_derived(graph, timestep):
    """Values computed from the timestep input (or any non-float graph input) before Sin/Cos."""
    init_names = {t.name for t in graph.initializer}
    tainted = {i.name for i in graph.input if i.name not in init_names and
               (i.name == timestep or i.type.tensor_type.elem_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE))}
    for node in graph.node:  # graph nodes are topologically sorted
        if node.op_type not in TIMESTEP_BARRIER and any(x in tainted for x in node.input):
            tainted.update(o for o in node.output if o)
    return tainted


def classify_initializers(model, params_regex=None, timestep=None, constant_regex=None):
    """Splits the float initializers into weights (in initializer order) and constants.

    Returns (weights, constants) where constants maps name -> reason. The exporter may have
    folded a weight into a generated constant (`val_123` = a Linear weight transposed, a
    GroupNorm weight reshaped to [C,1,1]): training that tensor is training the weight in
    another layout, which AdamW (elementwise) does not mind, so names are not used.
    """
    g = model.graph
    uses = consumers(g)
    ts = timestep_derived(g, timestep)
    node_inputs = {}
    for node in g.node:
        for x in node.input:
            node_inputs.setdefault(x, []).append(node)
    weights, constants = [], {}
    for t in g.initializer:
        if t.data_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16):
            continue
        name = t.name
        if params_regex is not None:
            if re.search(params_regex, name):
                if t.data_type != TensorProto.FLOAT:
                    raise ValueError(f"initializer `{name}` matches --params but is not float32")
                weights.append(name)
            else:
                constants[name] = "not matched by --params"
            continue
        if constant_regex is not None and re.search(constant_regex, name):
            constants[name] = "matched by --constant"
            continue
        if t.data_type != TensorProto.FLOAT:
            constants[name] = f"element type {TensorProto.DataType.Name(t.data_type)}, not float32"
            continue
        numel = int(np.prod(t.dims)) if len(t.dims) else 1
        used = uses.get(name, [])
        bad = [(op, i) for op, i in used if i in NON_DIFF_INPUTS.get(op, ())]
        with_ts = [n.op_type for n in node_inputs.get(name, []) if any(x in ts for x in n.input if x != name)]
        if not used:
            constants[name] = "unused"
        elif bad:
            constants[name] = f"used as {bad[0][0]} input {bad[0][1]} (no gradient there)"
        elif numel <= 1:
            constants[name] = "scalar"
        elif with_ts:
            constants[name] = f"combined ({with_ts[0]}) with the timestep before Sin/Cos: sinusoidal embedding constant"
        else:
            a = numpy_helper.to_array(t)
            if np.all(a == a.flat[0]):
                constants[name] = f"all values equal {float(a.flat[0])!r} (normalisation constant)"
            else:
                weights.append(name)
    return weights, constants


def weights_layout(model, names, small_align=64, big_align=4096, big=1 << 20):
    """Byte offsets of each weight in unet.weights.bin: 64-byte aligned, 4 KiB for tensors >= 1 MiB."""
    inits = {t.name: t for t in model.graph.initializer}
    layout, off = [], 0
    for n in names:
        t = inits[n]
        nbytes = int(np.prod(t.dims)) * 4 if len(t.dims) else 4
        a = big_align if nbytes >= big else small_align
        off = (off + a - 1) // a * a
        layout.append({"name": n, "shape": [int(d) for d in t.dims], "offset": off, "length": nbytes})
        off += nbytes
    return layout, off


def externalize(model, layout, bin_path, location=WEIGHTS_FILE):
    """Writes the weights to `bin_path` (raw float32 LE at the layout's offsets) and points the
    model's initializers there. Other initializers stay inline. Returns the SHA-256 of the file."""
    inits = {t.name: t for t in model.graph.initializer}
    h = hashlib.sha256()
    with open(bin_path, "wb") as f:
        for e in layout:
            t = inits[e["name"]]
            data = numpy_helper.to_array(t).astype("<f4", copy=False).tobytes()
            assert len(data) == e["length"], e["name"]
            pad = e["offset"] - f.tell()
            assert pad >= 0
            f.write(b"\0" * pad)
            h.update(b"\0" * pad)
            f.write(data)
            h.update(data)
    for e in layout:
        t = inits[e["name"]]
        t.ClearField("raw_data")
        t.ClearField("float_data")
        del t.external_data[:]
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", str(e["offset"])), ("length", str(e["length"]))):
            entry = t.external_data.add()
            entry.key, entry.value = k, v
    return h.hexdigest()


# ----------------------------------------------------------------------------------------
# Training graph
# ----------------------------------------------------------------------------------------
def _dims(vi):
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


def fix_batch(model, batch):
    """Sets every symbolic leading dimension of the graph inputs and outputs to `batch` and drops
    the intermediate value_info (re-inferred later). Any other dynamic input dimension is an error."""
    g = model.graph
    init_names = {t.name for t in g.initializer}
    for is_input, vis in ((True, g.input), (False, g.output)):
        for vi in vis:
            if vi.name in init_names or not vi.type.HasField("tensor_type"):
                continue
            for i, d in enumerate(vi.type.tensor_type.shape.dim):
                if d.HasField("dim_value"):
                    continue
                if i == 0:
                    d.Clear()
                    d.dim_value = batch
                elif is_input:
                    raise ValueError(f"input `{vi.name}` has dynamic dimension {i} ({_dims(vi)}): a training graph needs "
                                     "static shapes except the batch; re-export the UNet with a static resolution")
                else:
                    d.Clear()  # an output: shape inference fills it in
    del g.value_info[:]
    return model


def weights_to_inputs(model, names):
    """Moves the initializers `names` into graph inputs, placed before the original inputs."""
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    new_inputs = [helper.make_tensor_value_info(n, inits[n].data_type, list(inits[n].dims)) for n in names]
    keep = [t for t in g.initializer if t.name not in set(names)]
    del g.initializer[:]
    g.initializer.extend(keep)
    old = [i for i in g.input if i.name not in set(names)]
    del g.input[:]
    g.input.extend(new_inputs + old)
    return model


def add_loss(model, output):
    """Appends `loss = ReduceMean((output - target)^2, keepdims=0)` as the only graph output."""
    g = model.graph
    outs = {o.name: o for o in g.output}
    if output not in outs:
        raise ValueError(f"the UNet has no output `{output}` (it has {', '.join(outs)})")
    o = outs[output]
    tt = o.type.tensor_type
    target = helper.make_tensor_value_info(TARGET, tt.elem_type, _dims(o))
    g.input.append(target)
    g.node.extend([
        helper.make_node("Sub", [output, TARGET], ["_atp_diff"], name="atp_loss_sub"),
        helper.make_node("Mul", ["_atp_diff", "_atp_diff"], ["_atp_sq"], name="atp_loss_sq"),
        helper.make_node("ReduceMean", ["_atp_sq"], [LOSS], name="atp_loss_mean", keepdims=0),
    ])
    del g.output[:]
    g.output.append(helper.make_tensor_value_info(LOSS, tt.elem_type, []))
    return model


# Ops whose output 0 has the shape of input 0 but which onnx's shape inference leaves unshaped
# (GroupNormalization-21 is a function op without an inference rule).
SAME_SHAPE_OPS = {"GroupNormalization"}


def infer_shapes(model, strict=True):
    """onnx shape inference, plus the shape-preserving ops it cannot type, repeated to a fixed point."""
    m = model
    for _ in range(50):
        m = onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=strict, data_prop=True)
        known = {vi.name: vi for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)}
        added = 0
        for node in m.graph.node:
            if node.op_type not in SAME_SHAPE_OPS or not node.output[0]:
                continue
            src, dst = known.get(node.input[0]), known.get(node.output[0])
            if src is None or not src.type.tensor_type.HasField("shape"):
                continue
            if dst is not None and dst.type.tensor_type.HasField("shape"):
                continue
            vi = onnx.ValueInfoProto()
            vi.CopyFrom(src)
            vi.name = node.output[0]
            if dst is not None:
                dst.CopyFrom(vi)
            else:
                m.graph.value_info.append(vi)
            added += 1
        if not added:
            return m
    return m


def check_static(model):
    """Strict shape inference; every value must end up with a static shape."""
    m = infer_shapes(model)
    known = {vi.name: vi for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output)}
    init_names = {t.name for t in m.graph.initializer}
    missing, dynamic = [], []
    for node in m.graph.node:
        for out in node.output:
            if not out:
                continue
            vi = known.get(out)
            if vi is None or not vi.type.tensor_type.HasField("shape"):
                missing.append(f"{out} ({node.op_type})")
            elif any(not d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim):
                dynamic.append(f"{out} ({node.op_type}) {_dims(vi)}")
    for vi in m.graph.input:
        if vi.name not in init_names and any(not d.HasField("dim_value") for d in vi.type.tensor_type.shape.dim):
            dynamic.append(f"input {vi.name} {_dims(vi)}")
    if missing or dynamic:
        raise ValueError(f"shape inference left {len(missing)} values without a shape ({', '.join(missing[:5])}) and "
                         f"{len(dynamic)} with a dynamic shape ({', '.join(dynamic[:5])})")
    return m


def rewrite_unsupported(model):
    """Hook for ops onnx-ad cannot differentiate. None needed so far for diffusers UNets
    (GroupNorm exports as Reshape/InstanceNormalization/Reshape/Mul/Add, which onnx-ad handles);
    keeps a list of what it rewrote for the report."""
    return model, []


def forward_loss_graph(model, weights, batch, output, log_fn=log):
    """The forward graph with weights as inputs, static batch, optimised, with the loss appended
    as its only output and every shape inferred. `model` is not modified."""
    import onnxscript.optimizer

    m = onnx.ModelProto()
    m.CopyFrom(model)
    fix_batch(m, batch)
    weights_to_inputs(m, weights)
    m = infer_shapes(m, strict=False)  # static shapes let the optimiser fold the shape arithmetic
    t0 = time.time()
    m = onnxscript.optimizer.optimize(m)
    log_fn(f"  optimised: {len(model.graph.node)} -> {len(m.graph.node)} nodes in {time.time() - t0:.1f} s")
    names = {i.name for i in m.graph.input}
    lost = [w for w in weights if w not in names]
    if lost:
        raise ValueError(f"the optimiser dropped weight inputs {lost[:5]}")
    m, rewritten = rewrite_unsupported(m)
    add_loss(m, output)
    return check_static(m), rewritten


def make_train_graph(model, weights, trainable, batch, output, log_fn=log):
    """The training graph of an inference UNet `model` (a ModelProto; not modified)."""
    import onnx_ad

    m, rewritten = forward_loss_graph(model, weights, batch, output, log_fn)
    t0 = time.time()
    r = onnx_ad.reverse(m, inputs=list(trainable), outputs=[LOSS], layout="onnx")
    log_fn(f"  reverse: {len(m.graph.node)} -> {len(r.graph.node)} nodes in {time.time() - t0:.1f} s")
    onnx.checker.check_model(r, full_check=True)
    r.producer_name = "glad-edge export_train_graph.py"
    return r, rewritten


# ----------------------------------------------------------------------------------------
# Checks with ONNX Runtime
# ----------------------------------------------------------------------------------------
def ort_session(model_or_path, threads=2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    src = model_or_path if isinstance(model_or_path, str) else model_or_path.SerializeToString()
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


def unet_feeds(sess, batch, rng, spec):
    feeds = {}
    for i in sess.get_inputs():
        shape = [batch if (not isinstance(d, int) or d < 0) and k == 0 else d for k, d in enumerate(i.shape)]
        if i.name == spec["timestep"]:
            v = rng.integers(0, 1000, size=shape)
            feeds[i.name] = v.astype(np.int64 if "int64" in i.type else np.float32)
        else:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def read_weights(bin_path, layout):
    raw = np.fromfile(bin_path, dtype=np.uint8)
    out = {}
    for e in layout:
        b = raw[e["offset"]: e["offset"] + e["length"]]
        out[e["name"]] = b.view("<f4").reshape(e["shape"]).astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", required=True, help="bundle folder (onnx/<name>) with bundle.yaml and the inference UNet")
    ap.add_argument("--batch", type=int, action="append", required=True, help="batch size of a training graph (repeatable)")
    ap.add_argument("--freeze", help="regex (re.search) of weight names to keep fixed: fed as inputs, no gradient")
    ap.add_argument("--params", help="regex of the float initializers that are weights (default: automatic, see above)")
    ap.add_argument("--constant", help="regex of float initializers that are constants, not weights (on top of the automatic rule)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads for the checks")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random inputs of the checks")
    ap.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime checks")
    args = ap.parse_args()

    bdir = args.bundle
    mpath = os.path.join(bdir, "bundle.yaml")
    try:
        with open(mpath) as f:
            manifest = yaml.safe_load(f)
    except OSError as e:
        fail(f"{mpath}: cannot read the bundle manifest: {e}")
    try:
        spec = manifest["models"]["unet"]
        upath = os.path.join(bdir, spec["file"])
        output = spec["output"]
    except (KeyError, TypeError) as e:
        fail(f"{mpath}: key `models.unet.{e}` missing")
    if any(b < 1 for b in args.batch):
        fail("--batch must be at least 1")
    batches = sorted(set(args.batch))
    log(f"loading {upath}")
    try:
        model = onnx.load(upath)
    except Exception as e:  # noqa: BLE001 - report any load problem in one line
        fail(f"{upath}: cannot load: {e}")
    opset = {o.domain: o.version for o in model.opset_import}
    log(f"  {len(model.graph.node)} nodes, opset {opset.get('', opset.get('ai.onnx'))}, IR {model.ir_version}, "
        f"{len(model.graph.initializer)} initializers")

    try:
        weights, constants = classify_initializers(model, args.params, spec.get("timestep"), args.constant)
    except ValueError as e:
        fail(f"{upath}: {e}")
    if not weights:
        fail(f"{upath}: found no weight initializers (use --params REGEX)")
    frozen = [w for w in weights if args.freeze and re.search(args.freeze, w)]
    trainable = [w for w in weights if w not in set(frozen)]
    if not trainable:
        fail(f"--freeze {args.freeze!r} freezes every weight")
    inits = {t.name: t for t in model.graph.initializer}
    n_params = sum(int(np.prod(inits[w].dims)) for w in weights)
    n_train = sum(int(np.prod(inits[w].dims)) for w in trainable)
    log(f"  weights: {len(weights)} tensors, {n_params:,} values ({len(trainable)} tensors / {n_train:,} trainable); "
        f"{len(constants)} float constants")
    for name, why in constants.items():
        log(f"    constant {name}: {why}")

    layout, total = weights_layout(model, weights)
    rng = np.random.default_rng(args.seed)

    # 1. Inference UNet in external-data layout, checked against the original.
    ref = None
    if not args.no_verify:
        s0 = ort_session(upath, args.threads)
        feeds = unet_feeds(s0, 2, rng, spec)
        ref = s0.run([output], feeds)[0]
        del s0
    tmpdir = tempfile.mkdtemp(prefix=".export-", dir=bdir)
    try:
        ext = onnx.ModelProto()
        ext.CopyFrom(model)
        externalize(ext, layout, os.path.join(tmpdir, WEIGHTS_FILE))
        tmp_model = os.path.join(tmpdir, os.path.basename(upath))
        with open(tmp_model, "wb") as f:
            f.write(ext.SerializeToString())
        onnx.checker.check_model(tmp_model, full_check=True)
        if ref is not None:
            got = ort_session(tmp_model, args.threads).run([output], feeds)[0]
            if not np.array_equal(got, ref):
                fail(f"re-saved UNet differs from {upath}: max |diff| {np.abs(got - ref).max():.3g}")
            log("  external-data UNet: ONNX Runtime output bit-identical to the original")
        os.replace(os.path.join(tmpdir, WEIGHTS_FILE), os.path.join(os.path.dirname(upath), WEIGHTS_FILE))
        os.replace(tmp_model, upath)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    log(f"  wrote {upath} ({os.path.getsize(upath) / 1e6:.2f} MB) + {WEIGHTS_FILE} ({total / 1e6:.2f} MB)")

    # 2. Training graphs.
    tdir = os.path.join(bdir, TRAIN_DIR)
    os.makedirs(tdir, exist_ok=True)
    graphs, rewritten = [], []
    shapes = {}
    for b in batches:
        log(f"training graph, batch {b}")
        try:
            r, rewritten = make_train_graph(model, weights, trainable, b, output)
        except ValueError as e:
            fail(f"{upath}: {e}")
        fname = f"train_b{b}.onnx"
        path = os.path.join(tdir, fname)
        data = r.SerializeToString()
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
        log(f"  wrote {path} ({len(data) / 1e6:.2f} MB, {len(r.graph.node)} nodes)")
        graphs.append({"batch": b, "file": fname, "nodes": len(r.graph.node), "bytes": len(data)})
        ins = {i.name: i for i in r.graph.input}
        shapes = {k: _dims(ins[spec[k]]) for k in ("sample", "timestep") if spec.get(k) in ins}
        if spec.get("context") and spec["context"] in ins:
            shapes["context"] = _dims(ins[spec["context"]])
        if not args.no_verify:
            check_train_graph(path, upath, layout, trainable, spec, output, b, rng, args.threads)

    sample = shapes.get("sample", [])
    doc = {
        "format": 1,
        "unet": spec["file"],
        "weights": WEIGHTS_FILE,
        "dtype": "float32",
        "inputs": {
            "sample": spec["sample"],
            "timestep": spec["timestep"],
            "timestep_type": spec.get("timestep_type", "int64"),
            "context": spec.get("context"),
            "target": TARGET,
            "seed": SEED,
        },
        "loss": LOSS,
        "latent": [int(d) for d in sample[1:]],
        "context_shape": [int(d) for d in shapes["context"][1:]] if "context" in shapes else None,
        "freeze": args.freeze,
        "rewritten_ops": rewritten,
        "graphs": graphs,
        "trainable": [dict(e, grad=GRAD_PREFIX + e["name"]) for e in layout if e["name"] in set(trainable)],
        "frozen": [e for e in layout if e["name"] in set(frozen)],
    }
    ypath = os.path.join(tdir, TRAIN_YAML)
    # Keep the graphs of other batch sizes from an earlier run when the weights are the same.
    try:
        with open(ypath) as f:
            old = yaml.safe_load(f) or {}
    except OSError:
        old = {}
    same = ([e["name"] for e in old.get("trainable", [])] == [e["name"] for e in doc["trainable"]]
            and [e["name"] for e in old.get("frozen", [])] == [e["name"] for e in doc["frozen"]]
            and old.get("latent") == doc["latent"])
    for g in old.get("graphs", []):
        if g.get("batch") in batches:
            continue
        if same and os.path.isfile(os.path.join(tdir, g.get("file", ""))):
            graphs.append(g)
            log(f"  keeping {g['file']} (batch {g['batch']}) from an earlier run")
        else:
            log(f"  dropping {g.get('file')} (batch {g.get('batch')}): exported for other weights; re-export it")
    graphs.sort(key=lambda g: g["batch"])
    header = ("# ATP training graphs for this bundle's UNet (scripts/export_train_graph.py).\n"
              "# Every weight (trainable, then frozen) is a graph input, read from `weights` at `offset` (bytes),\n"
              "# `length` bytes of float32 little endian; trainable ones have a gradient output `grad`\n"
              "# (shape + [1]). Feed `seed` = [1.0]; `loss` = mean((noise_pred - target)^2).\n")
    with open(ypath + ".tmp", "w") as f:
        f.write(header)
        yaml.safe_dump(doc, f, sort_keys=False, default_flow_style=None, width=140)
    os.replace(ypath + ".tmp", ypath)
    log(f"wrote {ypath}")


def check_train_graph(path, upath, layout, trainable, spec, output, batch, rng, threads):
    """Loss of the training graph == MSE of the inference UNet; gradients finite, not all zero."""
    w = read_weights(os.path.join(os.path.dirname(upath), WEIGHTS_FILE), layout)
    su = ort_session(upath, threads)
    feeds = unet_feeds(su, batch, rng, spec)
    pred = su.run([output], feeds)[0]
    target = rng.standard_normal(pred.shape).astype(np.float32)
    mse = float(np.mean((pred.astype(np.float64) - target) ** 2))
    st = ort_session(path, threads)
    grads = [GRAD_PREFIX + n for n in trainable]
    t0 = time.time()
    outs = st.run([LOSS] + grads, dict(feeds, **w, **{TARGET: target, SEED: np.ones([1], np.float32)}))
    dt = time.time() - t0
    loss = float(outs[0])
    if abs(loss - mse) > 1e-5 * max(1.0, abs(mse)):
        fail(f"{path}: loss {loss} differs from the inference UNet's MSE {mse}")
    g = outs[1:]
    nonfinite = [n for n, a in zip(trainable, g) if not np.all(np.isfinite(a))]
    if nonfinite:
        fail(f"{path}: non-finite gradient for {nonfinite[:3]}")
    zero = [n for n, a in zip(trainable, g) if not np.any(a)]
    gn = float(np.sqrt(sum(float(np.sum(a.astype(np.float64) ** 2)) for a in g)))
    log(f"  check: loss {loss:.6f} == inference MSE {mse:.6f}; grad norm {gn:.4g}; {len(zero)} all-zero gradients "
        f"{zero[:4]}; forward+backward {dt * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
