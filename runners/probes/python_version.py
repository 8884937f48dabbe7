"""The Python interpreter the jobs run in."""

import platform

from runners.probes.base import ProbeContext, probe


@probe("python")
def python(ctx: ProbeContext) -> dict[str, str]:
    return {"python": f"{platform.python_implementation()} {platform.python_version()}"}
