"""Operating system release, from os-release."""

from runners.probes.base import NotApplicable, ProbeContext, probe


def parse_os_release(text: str) -> str:
    """PRETTY_NAME (or NAME VERSION_ID) from an os-release file."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip().strip('"')
    return values.get("PRETTY_NAME") or " ".join(filter(None, [values.get("NAME"), values.get("VERSION_ID")])) \
        or "unknown"


@probe("os")
def os_release(ctx: ProbeContext) -> dict[str, str]:
    for candidate in (ctx.etc_root / "os-release", ctx.etc_root.parent / "usr/lib/os-release"):
        if candidate.is_file():
            return {"os": parse_os_release(candidate.read_text())}
    raise NotApplicable("no os-release file")
