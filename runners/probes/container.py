"""The container image the target runs, by digest: from the environment or a file provisioning writes."""

import os
from pathlib import Path

from runners.probes.base import NotApplicable, ProbeContext, probe

DIGEST_VARIABLE = "REVALIDATOR_IMAGE_DIGEST"
DIGEST_FILE_VARIABLE = "REVALIDATOR_IMAGE_DIGEST_FILE"


@probe("container_image")
def container_image(ctx: ProbeContext) -> dict[str, str]:
    env = os.environ if ctx.environ is None else ctx.environ
    if env.get(DIGEST_VARIABLE):
        return {"container_image": env[DIGEST_VARIABLE].strip()}
    if env.get(DIGEST_FILE_VARIABLE):
        return {"container_image": Path(env[DIGEST_FILE_VARIABLE]).read_text().strip()}
    raise NotApplicable(f"neither {DIGEST_VARIABLE} nor {DIGEST_FILE_VARIABLE} is set")
