"""TensorRT's version, from package metadata."""

from runners.probes.base import ProbeContext, probe
from runners.probes.packages import distribution


@probe("tensorrt")
def tensorrt(ctx: ProbeContext) -> dict[str, str]:
    return {"tensorrt": distribution("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-libs").version}
