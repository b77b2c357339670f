#!/usr/bin/env python3
"""Test models for the weight precision `glad info` reports (tests/precision.rs), written with
the onnx helper API and onnxruntime.quantization into tests/golden/precision/:

  linear_fp32.onnx   y = x W + b, float32 weights
  linear_fp16.onnx   the same with float16 weights and compute, float32 IO (Cast in, Cast out)
  linear_int8.onnx   linear_fp32 through onnxruntime.quantization.quantize_dynamic (int8 weights)
  dino_fp16.onnx     onnx/tiny/dino.onnx with every float32 initializer stored in float16 and
                     cast back to float32 where it is used (an fp16-converted backbone with the
                     same inputs and outputs)
"""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "golden", "precision")


def linear(dtype):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 64)).astype(dtype)
    b = rng.standard_normal(64).astype(dtype)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    nodes, x = [], "x"
    if elem != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["x"], ["xc"], to=elem))
        x = "xc"
    nodes += [helper.make_node("MatMul", [x, "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["yc" if elem != TensorProto.FLOAT else "y"])]
    if elem != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["yc"], ["y"], to=TensorProto.FLOAT))
    g = helper.make_graph(nodes, "linear", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 64])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    onnx.checker.check_model(m)
    return m


def weights_to_fp16(model):
    g = model.graph
    casts = []
    for init in g.initializer:
        if init.data_type != TensorProto.FLOAT:
            continue
        a = numpy_helper.to_array(init).astype(np.float16)
        name = init.name
        init.CopyFrom(numpy_helper.from_array(a, name + "_fp16"))
        casts.append(helper.make_node("Cast", [name + "_fp16"], [name], to=TensorProto.FLOAT))
    nodes = casts + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(model)
    return model


def main():
    from onnxruntime.quantization import QuantType, quantize_dynamic

    os.makedirs(OUT, exist_ok=True)
    onnx.save(linear(np.float32), os.path.join(OUT, "linear_fp32.onnx"))
    onnx.save(linear(np.float16), os.path.join(OUT, "linear_fp16.onnx"))
    quantize_dynamic(os.path.join(OUT, "linear_fp32.onnx"), os.path.join(OUT, "linear_int8.onnx"), weight_type=QuantType.QInt8)
    dino = onnx.load(os.path.join(HERE, "..", "onnx", "tiny", "dino.onnx"))
    onnx.save(weights_to_fp16(dino), os.path.join(OUT, "dino_fp16.onnx"))
    for f in sorted(os.listdir(OUT)):
        print(f, os.path.getsize(os.path.join(OUT, f)))


if __name__ == "__main__":
    main()
