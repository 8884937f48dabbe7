# The revalidator daemon (and CPU Ray nodes): a slim, non-root image.
# Build from the repository root: docker build -f docker/daemon.Dockerfile -t revalidator .
FROM python:3.11-slim AS build
# A C compiler for the fused comparison kernel (runners/_rowmetrics.c); only the build stage has it.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY scheduler ./scheduler
COPY runners ./runners
RUN python -m venv /opt/revalidator \
 && /opt/revalidator/bin/pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu \
 && /opt/revalidator/bin/pip install --no-cache-dir .

FROM python:3.11-slim
RUN groupadd --gid 10001 revalidator \
 && useradd --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin revalidator
COPY --from=build /opt/revalidator /opt/revalidator
ENV PATH=/opt/revalidator/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
EXPOSE 9108
ENTRYPOINT ["revalidator"]
CMD ["daemon", "-c", "/etc/revalidator/targets.yaml"]
