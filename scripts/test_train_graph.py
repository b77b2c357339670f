"""Checks of the ATP training graphs (scripts/export_train_graph.py). Run: python3 -m pytest scripts/test_train_graph.py

Needs numpy, onnx, onnxscript, onnx-ad, onnxruntime, pyyaml; no torch.

1. Gradient check on a mini UNet built here with onnx.helper (Conv, stride-2 Conv, GroupNormalization-21,
   GroupNorm as the torch exporter writes it (Reshape/InstanceNormalization/Reshape/Mul/Add), SiLU, GELU (Erf),
   Sin/Cos timestep embedding, MatMul/Softmax cross-attention, Resize x2 nearest, Concat skip): onnx-ad's
   gradients, run by ONNX Runtime in float32, against central finite differences of the same forward+loss graph
   in float64 run by onnx.reference.ReferenceEvaluator (GroupNormalization with stash_type=11 and a float64 Erf,
   since the reference Erf rounds through float32).
2. The committed tiny training graph's loss equals the MSE of the bundle's inference UNet for the same inputs.
"""

import math
import os
import sys

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import export_train_graph as etg  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "onnx", "tiny")

# Tolerances. Directional derivative along a random unit direction per weight tensor:
# |g32 . d - fd64| / ||g32 restricted to the tensor||. Largest single gradient entry per tensor:
# |g32_i - fd64_i| / |fd64_i|. Whole tensors: ||g32 - g64|| / ||g64|| against the float64 reverse graph run
# by the reference evaluator. Measured here: 1.7e-7, 4.3e-7 and 8.4e-7 (float32 rounding).
TOL_DIRECTIONAL = 1e-5
TOL_ENTRY = 1e-4
TOL_TENSOR = 1e-5
FD_STEP = 1e-4

WEIGHTS = [  # initializer order
    "time.linear.weight", "time.linear.bias", "conv_in.weight", "conv_in.bias", "norm1.weight", "norm1.bias",
    "norm2.weight", "norm2.bias", "down.weight", "down.bias", "attn.to_q.weight", "attn.to_k.weight",
    "attn.to_v.weight", "attn.to_out.weight", "attn.to_out.bias", "conv_out.weight", "conv_out.bias",
]


def mini_unet(seed=0, c=8, ctx=(5, 6)):
    """A small SD-style UNet with a dynamic batch (noise_pred [N,4,8,8])."""
    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def w(name, shape, scale=None, base=0.0):
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        s = scale if scale is not None else 1.0 / math.sqrt(fan_in)
        inits.append(numpy_helper.from_array((base + s * rng.standard_normal(shape)).astype(np.float32), name))
        return name

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def n(op, ins, outs=None, **kw):
        outs = outs or [f"{op.lower()}_{len(nodes)}"]
        nodes.append(helper.make_node(op, ins, outs, name=f"n{len(nodes)}_{op}", **kw))
        return outs[0]

    def silu(x):
        return n("Mul", [x, n("Sigmoid", [x])])

    # timestep embedding: sin/cos of t * freqs, Linear, GELU (Erf), then SiLU
    t = n("Cast", ["timestep"], to=TensorProto.FLOAT)
    t = n("Unsqueeze", [t, const("val_1", [1], np.int64)])
    freqs = const("val_2", np.exp(-math.log(10000.0) * np.arange(4) / 4))
    tf = n("Mul", [t, freqs])
    temb = n("Concat", [n("Sin", [tf]), n("Cos", [tf])], axis=1)
    temb = n("Add", [n("MatMul", [temb, w("time.linear.weight", [c, c])]), w("time.linear.bias", [c], 0.1)])
    erf = n("Erf", [n("Mul", [temb, const("val_3", 1 / math.sqrt(2.0))])])
    temb = n("Mul", [n("Mul", [temb, const("val_4", 0.5)]), n("Add", [erf, const("val_5", 1.0)])])
    temb = n("Unsqueeze", [silu(temb), const("val_6", [2, 3], np.int64)])

    h0 = n("Conv", ["sample", w("conv_in.weight", [c, 4, 3, 3]), w("conv_in.bias", [c], 0.1)], pads=[1, 1, 1, 1])
    h = n("Add", [h0, temb])
    h = silu(n("GroupNormalization", [h, w("norm1.weight", [c], 0.1, 1.0), w("norm1.bias", [c], 0.1)],
               num_groups=2, epsilon=1e-5))
    # GroupNorm the way the torch exporter writes it
    g = n("Reshape", [h, const("val_7", [0, 2, -1], np.int64)])
    g = n("InstanceNormalization", [g, const("val_8", np.ones(2)), const("val_9", np.zeros(2))], epsilon=1e-5)
    g = n("Reshape", [g, n("Shape", [h])])
    g = n("Add", [n("Mul", [g, w("norm2.weight", [c, 1, 1], 0.1, 1.0)]), w("norm2.bias", [c, 1, 1], 0.1)])
    d = n("Conv", [silu(g), w("down.weight", [c, c, 3, 3]), w("down.bias", [c], 0.1)], pads=[1, 1, 1, 1], strides=[2, 2])
    # cross-attention over encoder_hidden_states, one head
    hs = n("Transpose", [n("Reshape", [d, const("val_10", [0, c, -1], np.int64)])], perm=[0, 2, 1])  # [N,16,c]
    q = n("MatMul", [hs, w("attn.to_q.weight", [c, c])])
    k = n("MatMul", ["encoder_hidden_states", w("attn.to_k.weight", [ctx[1], c])])
    v = n("MatMul", ["encoder_hidden_states", w("attn.to_v.weight", [ctx[1], c])])
    s = n("Mul", [n("MatMul", [q, n("Transpose", [k], perm=[0, 2, 1])]), const("val_11", 1 / math.sqrt(c))])
    o = n("MatMul", [n("Softmax", [s], axis=-1), v])
    o = n("Add", [n("MatMul", [o, w("attn.to_out.weight", [c, c])]), w("attn.to_out.bias", [c], 0.1)])
    o = n("Reshape", [n("Transpose", [o], perm=[0, 2, 1]), n("Shape", [d])])
    d = n("Add", [d, o])
    up = n("Resize", [d, "", const("val_12", [1.0, 1.0, 2.0, 2.0])], mode="nearest")
    cat = n("Concat", [up, h0], axis=1)
    n("Conv", [silu(cat), w("conv_out.weight", [4, 2 * c, 3, 3]), w("conv_out.bias", [4], 0.1)], ["noise_pred"],
      pads=[1, 1, 1, 1])

    graph = helper.make_graph(
        nodes, "mini_unet",
        [helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["batch", 4, 8, 8]),
         helper.make_tensor_value_info("timestep", TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, ["batch", ctx[0], ctx[1]])],
        [helper.make_tensor_value_info("noise_pred", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    onnx.checker.check_model(m, full_check=True)
    return m


class Erf(OpRun):  # the class name is the op type it overrides
    """Erf in float64 (onnx.reference's Erf rounds through float32)."""

    op_domain = ""

    def _run(self, x):
        return (np.vectorize(math.erf, otypes=[x.dtype])(x),)


def to_float64(model):
    """A float64 copy: float tensors, casts to float, Constant values; GroupNormalization stash_type=11."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph

    def retype(vi):
        tt = vi.type.tensor_type
        if tt.elem_type == TensorProto.FLOAT:
            tt.elem_type = TensorProto.DOUBLE

    for vi in list(g.input) + list(g.output) + list(g.value_info):
        retype(vi)
    for i, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT:
            g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT:
                a.i = TensorProto.DOUBLE
            if a.type == onnx.AttributeProto.TENSOR and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(a.t).astype(np.float64), a.t.name))
        if node.op_type == "GroupNormalization":
            node.attribute.append(helper.make_attribute("stash_type", TensorProto.DOUBLE))
    return m


def _feeds(model, batch, rng):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    data = {
        "sample": rng.standard_normal([batch, 4, 8, 8]).astype(np.float32),
        "timestep": rng.integers(0, 1000, [batch]).astype(np.int64),
        "encoder_hidden_states": rng.standard_normal([batch, 5, 6]).astype(np.float32),
        "target": rng.standard_normal([batch, 4, 8, 8]).astype(np.float32),
    }
    return inits, data


def test_classification():
    m = mini_unet()
    weights, constants = etg.classify_initializers(m)
    assert weights == WEIGHTS
    # freqs (generated name), ones/zeros of InstanceNormalization, Resize scales, scalars
    for name in ("val_2", "val_8", "val_9", "val_12", "val_3", "val_11"):
        assert name in constants, name
    assert "Resize input 2" in constants["val_12"]
    assert "timestep" in constants["val_2"]


def test_external_data_roundtrip(tmp_path):
    m = mini_unet()
    weights, _ = etg.classify_initializers(m)
    layout, total = etg.weights_layout(m, weights)
    assert all(e["offset"] % 64 == 0 for e in layout)
    ext = onnx.ModelProto()
    ext.CopyFrom(m)
    etg.externalize(ext, layout, str(tmp_path / etg.WEIGHTS_FILE))
    assert os.path.getsize(tmp_path / etg.WEIGHTS_FILE) == total
    (tmp_path / "unet.onnx").write_bytes(ext.SerializeToString())
    rng = np.random.default_rng(1)
    _, data = _feeds(m, 3, rng)
    feeds = {k: data[k] for k in ("sample", "timestep", "encoder_hidden_states")}
    a = etg.ort_session(m, 1).run(["noise_pred"], feeds)[0]
    b = etg.ort_session(str(tmp_path / "unet.onnx"), 1).run(["noise_pred"], feeds)[0]
    assert np.array_equal(a, b)
    w = etg.read_weights(str(tmp_path / etg.WEIGHTS_FILE), layout)
    inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    assert all(np.array_equal(w[n], inits[n]) for n in weights)


def test_gradients_vs_finite_differences():
    batch = 2
    m = mini_unet()
    weights, _ = etg.classify_initializers(m)
    quiet = lambda *a: None  # noqa: E731
    train, _ = etg.make_train_graph(m, weights, weights, batch, "noise_pred", quiet)
    ins = [i.name for i in train.graph.input]
    assert ins == weights + ["sample", "timestep", "encoder_hidden_states", "target", "adj_loss"]
    assert [o.name for o in train.graph.output] == ["loss"] + ["adj_" + w for w in weights]

    rng = np.random.default_rng(0)
    w0, data = _feeds(m, batch, rng)
    w0 = {k: v for k, v in w0.items() if k in weights}
    out = etg.ort_session(train, 1).run(None, dict(data, **w0, adj_loss=np.ones([1], np.float32)))
    loss32, grads = float(out[0]), {w: g.reshape(w0[w].shape).astype(np.float64) for w, g in zip(weights, out[1:])}

    fwd, _ = etg.forward_loss_graph(m, weights, batch, "noise_pred", quiet)
    ref = ReferenceEvaluator(to_float64(fwd), new_ops=[Erf])
    base = {k: (v.astype(np.float64) if v.dtype == np.float32 else v) for k, v in data.items()}
    w64 = {k: v.astype(np.float64) for k, v in w0.items()}

    def loss(ws):
        return float(ref.run(["loss"], dict(base, **ws))[0])

    loss64 = loss(w64)
    assert abs(loss32 - loss64) <= 1e-5 * abs(loss64), (loss32, loss64)

    # whole gradient tensors against the float64 reverse graph
    exact = ReferenceEvaluator(to_float64(train), new_ops=[Erf]).run(None, dict(base, **w64, adj_loss=np.ones([1])))
    worst_tensor = 0.0
    for name, g64 in zip(weights, exact[1:]):
        g64 = g64.reshape(grads[name].shape)
        err = np.linalg.norm(grads[name] - g64) / np.linalg.norm(g64)
        worst_tensor = max(worst_tensor, err)
        assert err < TOL_TENSOR, f"{name}: float32 gradient {err:.2e} (relative L2) off the float64 one"

    worst_dir, worst_entry = 0.0, 0.0
    for name in weights:
        g = grads[name]
        gn = np.linalg.norm(g)
        assert gn > 0, f"{name}: zero gradient"
        d = rng.standard_normal(g.shape)
        d /= np.linalg.norm(d)
        fd = (loss(dict(w64, **{name: w64[name] + FD_STEP * d})) - loss(dict(w64, **{name: w64[name] - FD_STEP * d}))) / (2 * FD_STEP)
        err = abs(float(np.sum(g * d)) - fd) / gn
        worst_dir = max(worst_dir, err)
        assert err < TOL_DIRECTIONAL, f"{name}: directional derivative {np.sum(g * d)} vs finite difference {fd} (rel {err:.2e})"
        i = np.unravel_index(np.argmax(np.abs(g)), g.shape)
        e = np.zeros_like(g)
        e[i] = 1.0
        fd_i = (loss(dict(w64, **{name: w64[name] + FD_STEP * e})) - loss(dict(w64, **{name: w64[name] - FD_STEP * e}))) / (2 * FD_STEP)
        err_i = abs(g[i] - fd_i) / abs(fd_i)
        worst_entry = max(worst_entry, err_i)
        assert err_i < TOL_ENTRY, f"{name}{list(i)}: gradient {g[i]} vs finite difference {fd_i} (rel {err_i:.2e})"
    print(f"\nmini UNet, {len(weights)} weight tensors: loss f32 {loss32:.7f} vs f64 {loss64:.7f}; "
          f"max directional error {worst_dir:.2e} (tol {TOL_DIRECTIONAL:g}), max entry error {worst_entry:.2e} (tol {TOL_ENTRY:g}), "
          f"max tensor error vs float64 reverse graph {worst_tensor:.2e} (tol {TOL_TENSOR:g})")


@pytest.mark.skipif(not os.path.isfile(os.path.join(TINY, "train", "train.yaml")), reason="onnx/tiny/train not exported")
def test_tiny_train_graph_loss_equals_inference_mse():
    with open(os.path.join(TINY, "train", "train.yaml")) as f:
        spec = yaml.safe_load(f)
    with open(os.path.join(TINY, "bundle.yaml")) as f:
        unet = yaml.safe_load(f)["models"]["unet"]
    layout = spec["trainable"] + spec["frozen"]
    w = etg.read_weights(os.path.join(TINY, spec["weights"]), layout)
    graph = min(spec["graphs"], key=lambda g: g["batch"])
    batch = graph["batch"]
    rng = np.random.default_rng(7)
    inf = etg.ort_session(os.path.join(TINY, spec["unet"]), 1)
    feeds = etg.unet_feeds(inf, batch, rng, unet)
    pred = inf.run([unet["output"]], feeds)[0]
    target = rng.standard_normal(pred.shape).astype(np.float32)
    mse = float(np.mean((pred.astype(np.float64) - target) ** 2))
    train = etg.ort_session(os.path.join(TINY, "train", graph["file"]), 1)
    ins = {i.name: i for i in train.get_inputs()}
    assert set(ins) == set(w) | set(feeds) | {spec["inputs"]["target"], spec["inputs"]["seed"]}
    out = train.run([spec["loss"]] + [e["grad"] for e in spec["trainable"]],
                    dict(feeds, **w, **{spec["inputs"]["target"]: target, spec["inputs"]["seed"]: np.ones([1], np.float32)}))
    loss = float(out[0])
    assert abs(loss - mse) <= 1e-5 * mse, (loss, mse)
    for e, g in zip(spec["trainable"], out[1:]):
        assert list(g.shape) == e["shape"] + [1], e["name"]
        assert np.all(np.isfinite(g)), e["name"]
    print(f"\ntiny training graph (batch {batch}): loss {loss:.7f}, inference MSE {mse:.7f}")
