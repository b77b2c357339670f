#!/usr/bin/env python3
"""Writes the scoring graphs glad runs inside ONNX Runtime (`runtime.scoring: onnx|auto`).

Both graphs take per-image patch tokens with dynamic token counts and channels and compute,
in one GEMM, what src/glad/features.rs computes in Rust:

  normalise(t)   = t / max(||t||_2, 1e-12)              (row-wise, features::normalise)
  s              = normalise(x) normalise(r)^T          ([N, M], one Gemm with transB)
  m1[i]          = 1 - max_j s[i, j] = min_j (1 - <x_i, r_j>)   (features::min_cosine_distance)
  m2[j]          = 1 - max_i s[i, j] = min_i (1 - <x_i, r_j>)   (the symmetric term)

  cosine_maps.onnx  x [N,C], r [M,C]          -> m1 [N], m2 [M]          (one layer of the final map)
  adp_score.onnx    x [N,C], r [M,C], k [1]   -> map [N], score []       (ADP: m1, then the mean of
                                                                          its min(max(k,1), N) largest)

Only the onnx helper API is needed (no torch). Usage:
  python scripts/export_scoring_graphs.py [--out onnx/scoring]
"""

import argparse
import os

import onnx
from onnx import TensorProto, helper

OPSET = 18
IR_VERSION = 9  # ONNX Runtime 1.31 reads IR <= 13
EPS = 1e-12  # features::normalise


def _normalise(prefix, name, nodes):
    """Row-wise L2 normalisation with the eps of features::normalise."""
    nodes += [
        helper.make_node("ReduceL2", [name, "axis1"], [f"{prefix}_norm"], keepdims=1),
        helper.make_node("Max", [f"{prefix}_norm", "eps"], [f"{prefix}_normc"]),
        helper.make_node("Div", [name, f"{prefix}_normc"], [f"{prefix}_n"]),
    ]
    return f"{prefix}_n"


def _common():
    inits = [
        helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
        helper.make_tensor("eps", TensorProto.FLOAT, [], [EPS]),
        helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
    ]
    nodes = []
    xn = _normalise("x", "x", nodes)
    rn = _normalise("r", "r", nodes)
    nodes.append(helper.make_node("Gemm", [xn, rn], ["s"], transB=1))
    nodes += [
        helper.make_node("ReduceMax", ["s", "axis1"], ["s_row"], keepdims=0),
        helper.make_node("Sub", ["one", "s_row"], ["m1"]),
    ]
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "C"]),
        helper.make_tensor_value_info("r", TensorProto.FLOAT, ["M", "C"]),
    ]
    return nodes, inits, inputs


def cosine_maps():
    nodes, inits, inputs = _common()
    inits.append(helper.make_tensor("axis0", TensorProto.INT64, [1], [0]))
    nodes += [
        helper.make_node("ReduceMax", ["s", "axis0"], ["s_col"], keepdims=0),
        helper.make_node("Sub", ["one", "s_col"], ["m2"]),
    ]
    outputs = [
        helper.make_tensor_value_info("m1", TensorProto.FLOAT, ["N"]),
        helper.make_tensor_value_info("m2", TensorProto.FLOAT, ["M"]),
    ]
    graph = helper.make_graph(nodes, "glad_cosine_maps", inputs, outputs, inits)
    return _model(graph, "one layer of the final map: m1[i] = min_j (1 - <x_i, r_j>), m2[j] = min_i (1 - <x_i, r_j>)")


def adp_score():
    nodes, inits, inputs = _common()
    inputs.append(helper.make_tensor_value_info("k", TensorProto.INT64, [1]))
    inits.append(helper.make_tensor("k_min", TensorProto.INT64, [1], [1]))
    nodes += [
        helper.make_node("Identity", ["m1"], ["map"]),
        helper.make_node("Shape", ["m1"], ["n"]),
        helper.make_node("Max", ["k", "k_min"], ["k1"]),
        helper.make_node("Min", ["k1", "n"], ["kk"]),
        helper.make_node("TopK", ["m1", "kk"], ["top", "top_idx"], axis=0, largest=1, sorted=0),
        helper.make_node("ReduceMean", ["top"], ["score"], keepdims=0),
    ]
    outputs = [
        helper.make_tensor_value_info("map", TensorProto.FLOAT, ["N"]),
        helper.make_tensor_value_info("score", TensorProto.FLOAT, []),
    ]
    graph = helper.make_graph(nodes, "glad_adp_score", inputs, outputs, inits)
    return _model(graph, "ADP score: map[i] = min_j (1 - <x_i, r_j>), score = mean of the k largest map values")


def _model(graph, doc):
    graph.doc_string = doc
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="glad-edge export_scoring_graphs.py")
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m, full_check=True)
    return m


GRAPHS = {"cosine_maps.onnx": cosine_maps, "adp_score.onnx": adp_score}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "onnx", "scoring"), help="output folder (default onnx/scoring)")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    for name, make in GRAPHS.items():
        path = os.path.join(a.out, name)
        onnx.save(make(), path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
