# Ray worker nodes for GPU targets: CUDA runtime, onnxruntime-gpu, TensorRT, torch with CUDA.
# Build from the repository root: docker build -f docker/gpu-worker.Dockerfile -t revalidator-gpu-worker .
FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04 AS build
# Ubuntu's python3.11 is left unpinned on purpose: it follows the base image's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY scheduler ./scheduler
COPY runners ./runners
RUN python3.11 -m venv /opt/revalidator \
 && /opt/revalidator/bin/pip install --no-cache-dir ".[gpu]" \
 # onnxruntime and onnxruntime-gpu share one module: keep only the GPU build's files
 && /opt/revalidator/bin/pip uninstall -y onnxruntime \
 && /opt/revalidator/bin/pip install --no-cache-dir --force-reinstall --no-deps onnxruntime-gpu

FROM nvidia/cuda:12.6.3-cudnn-runtime-ubuntu22.04
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 revalidator \
 && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin revalidator
COPY --from=build /opt/revalidator /opt/revalidator
ENV PATH=/opt/revalidator/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
CMD ["ray", "start", "--block", "--address=auto"]
