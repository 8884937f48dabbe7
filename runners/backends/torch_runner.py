"""torch backend: TorchScript (.pt/.ts) or torch.export (.pt2) artifacts; CPU, or CUDA where present."""

from __future__ import annotations

import numpy as np

from runners.backends.base import ArtifactError, Runner


class TorchRunner(Runner):
    """Options: device ("cpu" or "cuda"), threads."""

    name = "torch"

    def _load(self) -> None:
        import torch

        self._torch = torch
        device = self.options.get("device", "cpu")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ArtifactError(f"{self.path}: device {device!r} requested but torch sees no CUDA device")
        self._device = torch.device(device)
        if "threads" in self.options:
            torch.set_num_threads(int(self.options["threads"]))
        try:
            if self.path.suffix == ".pt2":
                exported = torch.export.load(str(self.path))
                self._names = [s.arg.name for s in exported.graph_signature.input_specs
                               if s.kind == torch.export.graph_signature.InputKind.USER_INPUT]
                self._module = exported.module().to(self._device)
            else:
                self._module = torch.jit.load(str(self.path), map_location=self._device).eval()
                self._names = [a.name for a in self._module.forward.schema.arguments[1:]]
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
        return out.detach().to("cpu").numpy()

    def _release(self) -> None:
        del self._module
