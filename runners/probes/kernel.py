"""Kernel release, from /proc/sys/kernel/osrelease."""

from runners.probes.base import ProbeContext, probe, read_text


@probe("kernel")
def kernel(ctx: ProbeContext) -> dict[str, str]:
    return {"kernel": read_text(ctx.proc_root / "sys/kernel/osrelease").strip()}
