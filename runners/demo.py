"""Build the bundled demo: a digits classifier, its fp32 artifacts and quantized candidates,
and a tiny generative model with its own (runners/demo_text.py).

Everything comes from scikit-learn's bundled digits data; nothing is downloaded.

- fp32 baseline: ONNX (`digits-fp32.onnx`) and TorchScript (`digits-fp32.ts`).
- Clean candidates: onnxruntime dynamic int8, onnxruntime static int8 (calibrated on
  `calibration.npz`), torch dynamic int8.
- The aggressive candidate, `digits-w4a2.onnx`: 4-bit per-tensor weights and 2-bit
  per-tensor activations after the first layer, the activation range calibrated on
  ordinary scans. Faint (low-contrast) scans produce small activations that fall into the
  bottom one or two of the four levels, so they lose most of their signal while
  full-contrast scans barely notice: the `scan=faint` slice regresses while the aggregate
  holds. This is the classic low-bit activation failure on an under-represented group.

Usage: python -m runners.demo [OUT_DIR]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np

SEED = 7
INPUT = "pixels"
OUTPUT = "logits"
SCANS = ("clean", "noisy", "faint")
FAINT_GAIN = 0.3


# -- data -------------------------------------------------------------------------------------
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.data.astype(np.float32), bunch.target.astype(np.int64)


def scan_variants(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                  faint_every: int = 8) -> dict[str, np.ndarray]:
    """Evaluation rows as scanners produce them: every image clean and noisy, every
    `faint_every`-th one also as a faint scan (faint scans are the minority group)."""
    faint = slice(None, None, faint_every)
    groups = {
        "clean": (images, labels),
        "noisy": (np.clip(images + rng.normal(0, 2.0, images.shape), 0, 16), labels),
        "faint": (images[faint] * FAINT_GAIN, labels[faint]),
    }
    x = np.concatenate([g[0] for g in groups.values()]).astype(np.float32)
    y = np.concatenate([g[1] for g in groups.values()])
    scan = np.concatenate([np.full(len(g[1]), name) for name, g in groups.items()])
    return {INPUT: x, "labels": y, "digit": y.astype(str), "scan": scan}


# -- model ------------------------------------------------------------------------------------
def train_mlp(x: np.ndarray, y: np.ndarray, hidden: tuple[int, ...] = (128, 64), epochs: int = 60):
    """A small MLP trained with gain and noise augmentation, so fp32 reads faint scans well."""
    import torch

    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    sizes = (64, *hidden, 10)
    layers: list = []
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        gain = rng.uniform(0.2, 1.0, (len(x), 1)).astype(np.float32)
        noisy = np.clip(x * gain + rng.normal(0, 1.0, x.shape) * (rng.random((len(x), 1)) < 0.5), 0, 16)
        xb, yb = torch.from_numpy(noisy.astype(np.float32)), torch.from_numpy(y)
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xb[idx]), yb[idx]).backward()
            opt.step()
    return net.eval()


def linear_weights(net) -> list[tuple[np.ndarray, np.ndarray]]:
    import torch

    return [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
            for m in net if isinstance(m, torch.nn.Linear)]


def mlp_onnx(weights: list[tuple[np.ndarray, np.ndarray]], low_bit: dict | None = None):
    """An ONNX MLP; with `low_bit`, the first layer gets QDQ weights and QDQ output activations."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value, dtype) -> None:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))

    nodes, inits = [], []
    current = INPUT
    for i, (w, b) in enumerate(weights):
        w_name = f"w{i}"
        if low_bit and i == 0:
            const("w0_q", low_bit["w_int"], np.int8)
            const("w0_scale", low_bit["w_scale"], np.float32)
            const("w0_zero", 0, np.int8)
            nodes.append(helper.make_node("DequantizeLinear", ["w0_q", "w0_scale", "w0_zero"], [w_name]))
        else:
            const(w_name, w, np.float32)
        const(f"b{i}", b, np.float32)
        last = i == len(weights) - 1
        nodes += [helper.make_node("MatMul", [current, w_name], [f"mm{i}"]),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [OUTPUT if last else f"z{i}"])]
        if last:
            break
        nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i}"]))
        current = f"h{i}"
        if low_bit and i == 0:  # activations clipped to the calibrated range, then low-bit QDQ
            const("act_lo", 0, np.float32)
            const("act_hi", low_bit["act_max"], np.float32)
            const("act_scale", low_bit["act_scale"], np.float32)
            const("act_zero", 0, np.uint8)
            nodes += [helper.make_node("Clip", [current, "act_lo", "act_hi"], ["h0_clip"]),
                      helper.make_node("QuantizeLinear", ["h0_clip", "act_scale", "act_zero"], ["h0_q"]),
                      helper.make_node("DequantizeLinear", ["h0_q", "act_scale", "act_zero"], ["h0_dq"])]
            current = "h0_dq"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", weights[0][0].shape[0]])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", weights[-1][0].shape[1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def low_bit_quant(weights, calibration: np.ndarray, weight_bits: int = 4, act_bits: int = 2) -> dict:
    """Per-tensor low-bit weights and activations for the first layer, ranges from calibration."""
    w0, b0 = weights[0]
    w_levels = 2 ** (weight_bits - 1) - 1
    w_scale = float(np.abs(w0).max() / w_levels)
    act_max = float(np.maximum(calibration @ w0 + b0, 0).max())
    return {"w_int": np.clip(np.round(w0 / w_scale), -w_levels, w_levels).astype(np.int8), "w_scale": w_scale,
            "act_max": act_max, "act_scale": act_max / (2 ** act_bits - 1)}


# -- artifacts --------------------------------------------------------------------------------
class _Calibration:
    """onnxruntime CalibrationDataReader over the calibration rows."""

    def __init__(self, rows: np.ndarray) -> None:
        self._batches = iter([{INPUT: rows[i:i + 32]} for i in range(0, len(rows), 32)])

    def get_next(self):
        return next(self._batches, None)


def save_torchscript(net, path: Path) -> None:
    import torch

    class Classifier(torch.nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.body(pixels)

    torch.jit.script(Classifier(net)).save(str(path))


def build(out: Path) -> dict[str, str]:
    """Write every demo artifact into `out`; returns name -> path."""
    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    x, y = _digits()
    order = rng.permutation(len(x))
    train, test = order[:1100], order[1100:]
    net = train_mlp(x[train], y[train])
    weights = linear_weights(net)

    calibration = x[train][:256]
    np.savez(out / "calibration.npz", **{INPUT: calibration})
    np.savez(out / "digits-eval.npz", **scan_variants(x[test], y[test], rng))

    paths = {name: out / name for name in ("digits-fp32.onnx", "digits-int8-dynamic.onnx", "digits-int8-static.onnx",
                                           "digits-w4a2.onnx", "digits-fp32.ts", "digits-int8-dynamic.ts")}
    onnx.save(mlp_onnx(weights), paths["digits-fp32.onnx"])
    quantize_dynamic(paths["digits-fp32.onnx"], paths["digits-int8-dynamic.onnx"], weight_type=QuantType.QInt8)
    quantize_static(paths["digits-fp32.onnx"], paths["digits-int8-static.onnx"], _Calibration(calibration),
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    onnx.save(mlp_onnx(weights, low_bit_quant(weights, calibration)), paths["digits-w4a2.onnx"])
    save_torchscript(net, paths["digits-fp32.ts"])
    int8 = torch.ao.quantization.quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8)
    save_torchscript(int8, paths["digits-int8-dynamic.ts"])
    from runners import demo_text

    return {**{k: str(v) for k, v in paths.items()}, **demo_text.build(out)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runners.demo", description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="demo", help="output directory (default: demo)")
    args = parser.parse_args(argv)
    # The quantization tools advise on pre-processing and announce deprecations: not the user's concern here.
    logging.getLogger().setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paths = build(Path(args.out))
    print(json.dumps(paths, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
