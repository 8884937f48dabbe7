"""The demo's classifier: a digits MLP, its fp32 artifacts and its quantized candidates.

Data: scikit-learn's bundled digits (nothing is downloaded). Weights: `weights/digits-mlp.npz`,
trained once and kept (see examples/weights.py), so every machine builds the same artifacts.

- fp32 baseline: ONNX (`digits-fp32.onnx`) and TorchScript (`digits-fp32.ts`).
- Clean candidates: onnxruntime dynamic int8, onnxruntime static int8 (calibrated on
  `calibration.npz`; the ranges are computed here in float64 and handed to the quantizer, so
  they do not depend on onnxruntime's kernels), torch dynamic int8.
- The aggressive candidate, `digits-w8a3.onnx`: 8-bit per-tensor weights and 3-bit per-tensor
  activations after the second layer, truncated (not rounded) as fixed-point kernels that shift
  right without a rounding offset do, the range calibrated on ordinary scans. Truncation costs
  every activation up to one full level; full-contrast scans keep most of their signal, but
  faint (20% contrast) scans produce small activations that fall into the bottom level and lose
  it: the `scan=faint` slice regresses far beyond its tolerance while the aggregate holds. The
  classic low-bit failure on an under-represented group.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from examples import weights as kept

SEED = 7
INPUT = "pixels"
OUTPUT = "logits"
SCANS = ("clean", "noisy", "faint")
FAINT_GAIN = 0.2
TRAIN_ROWS = 1100
CALIBRATION_ROWS = 256
TRUNCATED_LAYER = 1          # activations after the second hidden layer
TRUNCATED_BITS = 3
TRUNCATED_PERCENTILE = 99.5  # of the calibration activations: the clipping range


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


def datasets() -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(training images, training labels, calibration rows, evaluation set), all from SEED."""
    rng = np.random.default_rng(SEED)
    x, y = _digits()
    order = rng.permutation(len(x))
    train, test = order[:TRAIN_ROWS], order[TRAIN_ROWS:]
    return x[train], y[train], x[train][:CALIBRATION_ROWS], scan_variants(x[test], y[test], rng)


# -- model ------------------------------------------------------------------------------------
Layers = list[tuple[np.ndarray, np.ndarray]]  # (weight (in, out), bias) per linear layer


def train_mlp(x: np.ndarray, y: np.ndarray, hidden: tuple[int, ...] = (128, 64), epochs: int = 60) -> Layers:
    """A small MLP trained with gain and noise augmentation, so fp32 reads faint scans well.
    The result depends on this CPU's torch kernels: run only to renew the kept weights."""
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
    return [(m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy())
            for m in net.eval() if isinstance(m, torch.nn.Linear)]


def to_arrays(layers: Layers) -> dict[str, np.ndarray]:
    return {**{f"w{i}": w for i, (w, _) in enumerate(layers)}, **{f"b{i}": b for i, (_, b) in enumerate(layers)}}


def from_arrays(arrays: dict[str, np.ndarray]) -> Layers:
    return [(arrays[f"w{i}"], arrays[f"b{i}"]) for i in range(len(arrays) // 2)]


def reference_forward(layers: Layers, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every named tensor of the fp32 graph, computed in float64: values that round to the same
    float32 on any CPU (kernel differences live in the last bits of float32 arithmetic)."""
    tensors = {INPUT: x.astype(np.float64)}
    current = tensors[INPUT]
    for i, (w, b) in enumerate(layers):
        tensors[f"mm{i}"] = current @ w.astype(np.float64)
        last = i == len(layers) - 1
        tensors[OUTPUT if last else f"z{i}"] = tensors[f"mm{i}"] + b
        if not last:
            current = tensors[f"h{i}"] = np.maximum(tensors[f"z{i}"], 0)
    return tensors


def per_tensor_int8(w: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """Symmetric per-tensor int8 weights and their scale."""
    scale = np.float32(np.abs(w).max() / 127)
    return np.clip(np.round(w / scale), -127, 127).astype(np.int8), scale


def truncation(layers: Layers, calibration: np.ndarray) -> dict[str, np.float32]:
    """The truncated activations' clipping range and step, from the calibration rows."""
    h = reference_forward(layers, calibration)[f"h{TRUNCATED_LAYER}"]
    act_max = np.float32(np.percentile(h, TRUNCATED_PERCENTILE))
    return {"max": act_max, "step": np.float32(act_max / (2 ** TRUNCATED_BITS - 1))}


def mlp_onnx(layers: Layers, truncate: dict | None = None):
    """An ONNX MLP; with `truncate`, int8 per-tensor weights everywhere and truncated low-bit
    activations after layer TRUNCATED_LAYER: Clip(0, max) -> Div(step) -> Floor -> Mul(step)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value, dtype) -> None:
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))

    nodes, inits = [], []
    current = INPUT
    for i, (w, b) in enumerate(layers):
        if truncate:
            w_int, w_scale = per_tensor_int8(w)
            const(f"w{i}_q", w_int, np.int8)
            const(f"w{i}_scale", w_scale, np.float32)
            const(f"w{i}_zero", 0, np.int8)
            nodes.append(helper.make_node("DequantizeLinear", [f"w{i}_q", f"w{i}_scale", f"w{i}_zero"], [f"w{i}"]))
        else:
            const(f"w{i}", w, np.float32)
        const(f"b{i}", b, np.float32)
        last = i == len(layers) - 1
        nodes += [helper.make_node("MatMul", [current, f"w{i}"], [f"mm{i}"]),
                  helper.make_node("Add", [f"mm{i}", f"b{i}"], [OUTPUT if last else f"z{i}"])]
        if last:
            break
        nodes.append(helper.make_node("Relu", [f"z{i}"], [f"h{i}"]))
        current = f"h{i}"
        if truncate and i == TRUNCATED_LAYER:
            const("act_lo", 0, np.float32)
            const("act_hi", truncate["max"], np.float32)
            const("act_step", truncate["step"], np.float32)
            nodes += [helper.make_node("Clip", [current, "act_lo", "act_hi"], ["act_clip"]),
                      helper.make_node("Div", ["act_clip", "act_step"], ["act_levels"]),
                      helper.make_node("Floor", ["act_levels"], ["act_int"]),
                      helper.make_node("Mul", ["act_int", "act_step"], ["act_trunc"])]
            current = "act_trunc"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["batch", layers[0][0].shape[0]])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", layers[-1][0].shape[1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


# -- artifacts --------------------------------------------------------------------------------
class _Calibration:
    """onnxruntime CalibrationDataReader over the calibration rows."""

    def __init__(self, rows: np.ndarray) -> None:
        self._batches = iter([{INPUT: rows[i:i + 32]} for i in range(0, len(rows), 32)])

    def get_next(self):
        return next(self._batches, None)


def calibrated_ranges(layers: Layers, calibration: np.ndarray) -> dict[str, list[dict[str, np.float32]]]:
    """onnxruntime's MinMax ranges for every tensor, computed in float64 instead of by running
    the model in onnxruntime (whose kernels differ by CPU): TensorQuantOverrides for quantize_static."""
    return {name: [{"rmin": np.float32(values.min()), "rmax": np.float32(values.max())}]
            for name, values in reference_forward(layers, calibration).items()}


def save_torchscript(layers: Layers, path: Path, int8: bool = False) -> None:
    import torch

    class Classifier(torch.nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.body(pixels)

    modules: list = []
    for i, (w, b) in enumerate(layers):
        linear = torch.nn.Linear(*w.shape)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w.T.copy()))
            linear.bias.copy_(torch.from_numpy(b))
        modules.append(linear)
        if i < len(layers) - 1:
            modules.append(torch.nn.ReLU())
    net = torch.nn.Sequential(*modules).eval()
    if int8:
        net = torch.ao.quantization.quantize_dynamic(net, {torch.nn.Linear}, dtype=torch.qint8)
    torch.jit.script(Classifier(net)).save(str(path))


ARTIFACTS = ("digits-fp32.onnx", "digits-int8-dynamic.onnx", "digits-int8-static.onnx", "digits-w8a3.onnx",
             "digits-fp32.ts", "digits-int8-dynamic.ts")


def build(out: Path) -> dict[str, str]:
    """Write every digits artifact, the evaluation and the calibration set into `out`."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static

    out.mkdir(parents=True, exist_ok=True)
    layers = from_arrays(kept.load("digits-mlp"))
    _, _, calibration, evaluation = datasets()
    np.savez(out / "calibration.npz", **{INPUT: calibration})
    np.savez(out / "digits-eval.npz", **evaluation)

    paths = {name: out / name for name in ARTIFACTS}
    onnx.save(mlp_onnx(layers), paths["digits-fp32.onnx"])
    quantize_dynamic(paths["digits-fp32.onnx"], paths["digits-int8-dynamic.onnx"], weight_type=QuantType.QInt8)
    quantize_static(paths["digits-fp32.onnx"], paths["digits-int8-static.onnx"], _Calibration(calibration),
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    extra_options={"TensorQuantOverrides": calibrated_ranges(layers, calibration)})
    onnx.save(mlp_onnx(layers, truncation(layers, calibration)), paths["digits-w8a3.onnx"])
    save_torchscript(layers, paths["digits-fp32.ts"])
    save_torchscript(layers, paths["digits-int8-dynamic.ts"], int8=True)
    return {name: str(path) for name, path in paths.items()}


def retrain() -> None:
    """Train anew on this machine and replace the kept weights."""
    images, labels, _, _ = datasets()
    kept.save("digits-mlp", to_arrays(train_mlp(images, labels)))
