"""ONNX graphs of an export's decoder and encoder, built from the same steps and arrays as emulator.json (no
torch tracing): decoder z -> curves in the family's units, encoder curves -> z, float32, any batch size.

Needs the `onnx` package (the `onnx` extra), imported only here, only when `--format onnx` asks for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from funcae_cli.errors import OptionError
from funcae_cli.export.build import MEAN, STD, Export

OPSET = 17  # Erf, Sigmoid, Tanh, Relu, MatMul: all older; 17 is what onnxruntime >= 1.13 runs
IR_VERSION = 8
INSTALL = "pip install 'funcae[onnx]'"


def _onnx() -> Any:
    try:
        import onnx  # optional dependency (the `onnx` extra): only --format onnx needs it
    except ImportError:
        raise OptionError("format", f"onnx needs the onnx package, which is not installed ({INSTALL})") from None
    return onnx


class _Graph:
    """Nodes and initializers of one graph, with fresh value names."""

    def __init__(self, onnx: Any):
        self.onnx, self.nodes, self.inits, self.n = onnx, [], [], 0

    def const(self, name: str, value: np.ndarray) -> str:
        if name not in {i.name for i in self.inits}:
            self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(value, dtype=np.float32), name))
        return name

    def op(self, kind: str, *inputs: str) -> str:
        self.n += 1
        out = f"{kind.lower()}_{self.n}"
        self.nodes.append(self.onnx.helper.make_node(kind, list(inputs), [out]))
        return out


ACTIVATIONS: dict[str, Callable[[_Graph, str], str]] = {
    "tanh": lambda g, x: g.op("Tanh", x),
    "relu": lambda g, x: g.op("Relu", x),
    "gelu": lambda g, x: g.op(
        "Mul",
        g.op("Mul", x, g.const("half", np.float32(0.5))),
        g.op("Add", g.op("Erf", g.op("Div", x, g.const("sqrt2", np.float32(math.sqrt(2.0))))), g.const("one", 1.0)),
    ),
    "silu": lambda g, x: g.op("Mul", x, g.op("Sigmoid", x)),
}
TRANSFORMS = {"none": (None, None), "log": ("Log", "Exp")}  # (forward, inverse) ONNX op of the transform


def _steps(g: _Graph, x: str, steps: list[dict], tensors: dict[str, np.ndarray]) -> str:
    for s in steps:
        if s["op"] == "linear":
            w = g.const(s["weight"] + ".T", tensors[s["weight"]].T)
            x = g.op("Add", g.op("MatMul", x, w), g.const(s["bias"], tensors[s["bias"]]))
        else:
            x = ACTIVATIONS[s["name"]](g, x)
    return x


def _model(g: _Graph, name: str, inp: tuple[str, int], out_name: str, out: str, width: int) -> bytes:
    onnx, h = g.onnx, g.onnx.helper
    g.nodes.append(h.make_node("Identity", [out], [out_name]))
    graph = h.make_graph(
        g.nodes, name, [h.make_tensor_value_info(inp[0], onnx.TensorProto.FLOAT, ["n", inp[1]])],
        [h.make_tensor_value_info(out_name, onnx.TensorProto.FLOAT, ["n", width])], g.inits,
    )  # fmt: skip
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="funcae")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model.SerializeToString()


def onnx_models(ex: Export) -> dict[str, bytes]:
    """{"decoder": bytes, "encoder": bytes}: serialized ONNX models (input `z` / `curves`, output `curves` / `z`)."""
    onnx, d, t = _onnx(), ex.description, ex.tensors
    forward, inverse = TRANSFORMS[d["normalization"]["transform"]]
    n_points, latent = d["model"]["n_points"], d["model"]["latent_dim"]
    g = _Graph(onnx)
    y = _steps(g, "z", d["decoder"]["steps"], t)
    y = g.op("Add", g.op("Mul", y, g.const(STD, t[STD])), g.const(MEAN, t[MEAN]))
    decoder = _model(g, "decoder", ("z", latent), "curves", g.op(inverse, y) if inverse else y, n_points)
    g = _Graph(onnx)
    x = g.op(forward, "curves") if forward else "curves"
    x = g.op("Div", g.op("Sub", x, g.const(MEAN, t[MEAN])), g.const(STD, t[STD]))
    encoder = _model(g, "encoder", ("curves", n_points), "z", _steps(g, x, d["encoder"]["steps"], t), latent)
    return {"decoder": decoder, "encoder": encoder}
