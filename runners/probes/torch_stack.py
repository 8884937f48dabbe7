"""torch, and the CUDA it was built with (read from torch/version.py, not by importing torch)."""

from runners.probes.base import ProbeContext, probe
from runners.probes.packages import assigned_string, distribution, read_package_file


@probe("torch")
def torch(ctx: ProbeContext) -> dict[str, str]:
    dist = distribution("torch")
    source = read_package_file(dist, "torch/version.py") or ""
    return {"torch": dist.version, "torch_cuda": assigned_string(source, "cuda") or "none"}
