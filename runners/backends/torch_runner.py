"""torch backend: TorchScript (.pt/.ts) or torch.export (.pt2) artifacts; CPU, or CUDA where present."""

from __future__ import annotations

from typing import Any

import numpy as np

from runners.backends.base import ArtifactError, BackendUnavailable, Runner
from runners.backends.cuda_device import device_record, require_cuda, restore_tf32, set_tf32, tf32_flags


class TorchRunner(Runner):
    """Options: device ("cpu", "cuda" or "cuda:N"), threads, tf32 (bool, default off: on CUDA, fp32
    means IEEE fp32 in matmuls and cuDNN convolutions, whatever torch's process defaults are)."""

    name = "torch"

    def _load(self) -> None:
        import torch

        self._torch = torch
        device = str(self.options.get("device") or "cpu")
        self._record: dict[str, Any] = {"device": "cpu"}
        if device.startswith("cuda"):
            index = require_cuda(torch, device, f"{self.path}: the torch runner")
            self._device = torch.device("cuda", index)
            self._record = device_record(torch, index)
        elif device == "cpu":
            self._device = torch.device("cpu")
        else:
            raise ArtifactError(f"{self.path}: torch device {device!r} is not 'cpu', 'cuda' or 'cuda:N'")
        if self.options.get("threads") is not None:
            torch.set_num_threads(int(self.options["threads"]))
        # TF32 is process-wide in torch: set for this runner's life, restored on release.
        self._tf32 = bool(self.options.get("tf32"))
        self._previous_tf32 = set_tf32(torch, self._tf32)
        try:
            self._module, self._names = self._read(torch)
        except Exception:
            restore_tf32(torch, self._previous_tf32)
            raise

    def _read(self, torch: Any) -> tuple[Any, list[str]]:
        try:
            if self.path.suffix == ".pt2":
                exported = torch.export.load(str(self.path))
                names = [s.arg.name for s in exported.graph_signature.input_specs
                         if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
                # .to() on the module leaves devices baked into the graph's nodes (tensor
                # constructors, device arguments): torch.export's own pass moves those too.
                try:
                    from torch.export.passes import move_to_device_pass
                except ImportError:  # torch < 2.6
                    if self._device.type != "cpu":
                        raise BackendUnavailable(f"{self.path}: a .pt2 on {self._device} needs torch>=2.6 "
                                                 f"(torch.export.passes), this target has {torch.__version__}")
                    return exported.module(), names
                return move_to_device_pass(exported, self._device).module(), names
            module = torch.jit.load(str(self.path), map_location=self._device).eval()
            return module, [a.name for a in module.forward.schema.arguments[1:]]
        except BackendUnavailable:
            raise
        except Exception as exc:  # torch raises RuntimeError/ValueError/zip errors for bad files
            raise ArtifactError(f"{self.path}: torch cannot load the model ({exc})") from exc

    def _input_names(self) -> list[str]:
        return self._names

    def _infer(self, batch: dict[str, np.ndarray]) -> np.ndarray:
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(batch[n])).to(self._device) for n in self._names]
        with torch.inference_mode():
            out = self._module(*args)
        if isinstance(out, (tuple, list)):
            out = out[0]
        self._output_dtype = str(out.dtype).removeprefix("torch.")
        if out.dtype == torch.bfloat16 or (out.is_floating_point() and out.element_size() == 1):
            out = out.float()  # bf16/fp8 have no numpy dtype
        return out.detach().to("cpu").numpy()

    def describe(self) -> dict[str, Any]:
        cuda = self._device.type == "cuda"
        flags = tf32_flags(self._torch)
        mode = "tf32" if cuda and (flags["matmul"] or flags["cudnn"]) else "fp32"
        # The mode is the fp32 arithmetic; an fp16 model computes in fp16 whatever it is: its output dtype says so.
        return {**self._record, "numeric_mode": mode, "tf32": flags if cuda else None,
                "output_dtype": getattr(self, "_output_dtype", None)}

    def _release(self) -> None:
        del self._module
        restore_tf32(self._torch, self._previous_tf32)
