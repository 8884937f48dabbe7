"""The shape of targets.yaml (version 1), as pydantic models that reject unknown keys."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from runners import catalogue

# lm-eval: an external harness's results (task "external"); transformers: causal LLMs (task "generation");
# openai: a model behind an OpenAI-compatible endpoint, its artifact an endpoint descriptor file (task "generation").
RUNNERS = ("onnxruntime", "torch", "tensorrt", "transformers", "openai", "lm-eval")
# A custom backend given as "package.module:Class" (a runners.backends.base.Runner subclass).
PLUGIN_RUNNER = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
TASKS = catalogue.TASKS
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


def _runner_name(name: str) -> str:
    if name not in RUNNERS and not re.match(PLUGIN_RUNNER, name):
        raise ValueError(f"unknown runner {name!r}: use {', '.join(RUNNERS)}, or a plugin as package.module:Class")
    return name


RunnerName = Annotated[str, AfterValidator(_runner_name)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OnnxRuntimeOptions(Strict):
    providers: list[Literal["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider",
                            "OpenVINOExecutionProvider", "ROCMExecutionProvider", "DnnlExecutionProvider"]] = \
        Field(default_factory=lambda: ["CPUExecutionProvider"], min_length=1)
    intra_op_threads: int | None = Field(default=None, ge=0, le=1024)
    inter_op_threads: int | None = Field(default=None, ge=0, le=1024)
    allow_spinning: bool = True
    # GPU providers: which GPU, and the numeric mode (TF32 off unless asked: CUDA's use_tf32).
    # Unset (None) fields stay out of the job key, so configs that do not use them keep their keys.
    device_id: int | None = Field(default=None, ge=0, le=1024)  # unset: 0
    tf32: bool | None = None  # unset: off
    fp16: bool | None = None  # TensorRT provider: trt_fp16_enable; unset: off
    workspace_mb: int | None = Field(default=None, ge=16)  # TensorRT provider; unset: 1024
    engine_cache_dir: str | None = None  # TensorRT provider: engines kept between sessions


class TorchOptions(Strict):
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    threads: int | None = Field(default=None, ge=1, le=1024)
    tf32: bool | None = None  # on CUDA: matmuls and cuDNN in TF32; unset or false: IEEE fp32


class TensorRTOptions(Strict):
    device: str = Field(default="cuda:0", pattern=r"^cuda(:\d+)?$")
    fp16: bool = False
    tf32: bool | None = None  # TensorRT's default is on; unset or false: IEEE fp32 where fp16 is not asked
    max_batch_size: int = Field(default=4096, ge=1, le=1_000_000)
    opt_batch_size: int | None = Field(default=None, ge=1, le=1_000_000)  # default min(1024, max_batch_size)
    workspace_mb: int = Field(default=1024, ge=16)
    cache_dir: str | None = None  # engines, keyed by GPU model, TensorRT version, model and options


class TransformersOptions(Strict):
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    threads: int | None = Field(default=None, ge=1, le=1024)
    batch_size: int = Field(default=32, ge=1, le=4096)  # prompts generated together (rows leave as they end)


class RunnerOptions(Strict):
    onnxruntime: OnnxRuntimeOptions = Field(default_factory=OnnxRuntimeOptions)
    torch: TorchOptions = Field(default_factory=TorchOptions)
    tensorrt: TensorRTOptions = Field(default_factory=TensorRTOptions)
    transformers: TransformersOptions = Field(default_factory=TransformersOptions)


class Placement(Strict):
    """Where a target's jobs run: this process's local Ray, a Ray custom resource, or node labels."""

    resource: str | None = Field(default=None, min_length=1)
    labels: dict[str, str] | None = None

    @model_validator(mode="after")
    def one_kind(self) -> "Placement":
        if (self.resource is None) == (self.labels is None):
            raise ValueError("give exactly one of 'resource' or 'labels'")
        return self


class CustomProbe(Strict):
    """A stack component the config declares: a file provisioning writes, or a command's output."""

    file: str | None = None
    command: list[str] | None = Field(default=None, min_length=1)
    timeout_seconds: float = Field(default=10, gt=0, le=300)
    affects: list[Literal[RUNNERS]] | Literal["all", "gpu"] = "all"  # type: ignore[valid-type]

    @model_validator(mode="after")
    def one_source(self) -> "CustomProbe":
        if (self.file is None) == (self.command is None):
            raise ValueError("give exactly one of 'file' or 'command'")
        return self


class Target(Strict):
    where: Literal["local"] | Placement = "local"
    runners: list[RunnerName] = Field(min_length=1)
    options: RunnerOptions = Field(default_factory=RunnerOptions)
    batch_size: int | None = Field(default=None, ge=1, le=1_000_000)
    max_concurrent_jobs: int = Field(default=1, ge=1, le=1024)
    probes: dict[str, CustomProbe] = Field(default_factory=dict)

    @field_validator("probes")
    @classmethod
    def probe_names(cls, value: dict[str, CustomProbe]) -> dict[str, CustomProbe]:
        _check_names(value)
        return value


class Quantization(Strict):
    method: str = Field(min_length=1)
    weight_bits: int = Field(ge=1, le=32)
    activation_bits: int | None = Field(default=None, ge=1, le=32)
    calibration_set: str | None = None
    tool: str | None = None
    tool_version: str | None = None
    # transformers: a quantization applied to the artifact at load (runners/backends/recipes.py)
    recipe: Literal["torchao-int8-weight-only", "torchao-int4-weight-only-g32", "torch-dynamic-int8"] | None = None


class Artifact(Strict):
    path: str = Field(min_length=1)
    runner: RunnerName


class Candidate(Artifact):
    quantization: Quantization


class Model(Strict):
    baseline: Artifact
    candidates: dict[str, Candidate] = Field(min_length=1)
    suites: list[str] = Field(min_length=1)
    targets: list[str] | None = None  # None: every target that offers the runners

    @field_validator("candidates")
    @classmethod
    def candidate_names(cls, value: dict[str, Candidate]) -> dict[str, Candidate]:
        _check_names(value)
        return value


def _check_name(name: str) -> str:
    if name not in catalogue.names():
        raise ValueError(f"unknown check {name!r} (use: {', '.join(catalogue.names())})")
    return name


Checks = dict[Annotated[str, AfterValidator(_check_name)], float]


class Generation(Strict):
    """How a generative suite drives its models: greedy, up to max_new_tokens. Step models
    (onnxruntime, torch) need the tokenizer, context and a one-character stop; transformers
    models bring their tokenizer and stop at their end-of-sequence token."""

    tokenizer: str | None = Field(default=None, min_length=1)  # step models: {"type": "characters", "tokens": [...]}
    context: int | None = Field(default=None, ge=1, le=1_000_000)  # tokens the step model sees
    max_new_tokens: int = Field(ge=1, le=100_000)
    stop: str | None = Field(default="\n", min_length=1)  # step models: one character; LLMs: ends the text
    chat_template: bool = True  # transformers: wrap each prompt in the model's chat template
    system_prompt: str | None = None  # transformers: a system message before every prompt
    input: str | None = None  # the model input that takes the token window (default: its only input)
    refusal_patterns: list[str] | None = Field(default=None, min_length=1)  # regexes; None: the default set
    curve_positions: list[Annotated[int, Field(ge=1)]] | None = Field(default=None, min_length=1)

    @field_validator("refusal_patterns")
    @classmethod
    def patterns_compile(cls, value: list[str] | None) -> list[str] | None:
        for pattern in value or ():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"refusal pattern {pattern!r} is not a valid regular expression ({exc})") from exc
        return value


class TensorTolerance(Strict):
    """An output element passes when |candidate - baseline| <= atol + rtol * |baseline| (the tensor family's rule)."""

    atol: float = Field(default=0.0, ge=0)
    rtol: float = Field(default=0.0, ge=0)


class External(Strict):
    """An external harness's results: read from the artifact paths, or produced by a command."""

    format: Literal["lm-eval"] = "lm-eval"
    # argv, no shell; "{model}" is the artifact path, "{output}" a fresh folder for its results
    command: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    timeout_seconds: float = Field(default=3600, gt=0)
    metrics: list[str] | None = Field(default=None, min_length=1)  # None: every metric reported


class Decision(Strict):
    """How evidence becomes a verdict (runners/decision.py), fixed before any run: part of the job key.

    point: the point value against the tolerance (the default). release: pass only what the
    confidence bound shows within tolerance; the rest is fail or inconclusive, and inconclusive
    keeps serving on the baseline. alert: fail only what the bound shows beyond tolerance; an
    inconclusive result is reported but serving stays on the candidate."""

    policy: Literal["point", "release", "alert"] = "point"
    correction: Literal["holm", "bh", "none"] = "holm"  # across every check x slice (x batch size) of a run
    resamples: int = Field(default=1000, ge=100, le=100_000)  # bootstrap replicates for magnitudes


class Suite(Strict):
    data: str | None = Field(default=None, min_length=1)  # not used by task "external"
    task: Literal[TASKS]  # type: ignore[valid-type]
    slices: list[str] = Field(min_length=1)
    checks: Checks = Field(min_length=1)
    slice_checks: Checks | None = None
    min_slice_size: int = Field(default=30, ge=1)
    max_slice_values: int = Field(default=1000, ge=1, le=100_000)  # distinct values per slice column
    confidence: float = Field(default=0.95, gt=0, lt=1)
    insufficient_blocks_gate: bool = False
    decision: Decision | None = None  # None: the point rule
    output: Literal["logits", "probabilities"] = "logits"
    generation: Generation | None = None  # required for task "generation"
    external: External | None = None  # required for task "external"
    tolerance: TensorTolerance | None = None  # the element rule of min_within_tolerance
    # Batch sizes production serves the candidate at; every check is judged at each (classification).
    batch_sizes: list[Annotated[int, Field(ge=1, le=1_000_000)]] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def fits_the_task(self) -> "Suite":
        if self.task != "external" and self.data is None:
            raise ValueError(f"task {self.task!r} needs 'data'")
        if (self.task == "external") != (self.external is not None):
            raise ValueError("task 'external' needs an 'external' section, and only it takes one")
        if self.task == "generation" and self.generation is None:
            raise ValueError("task 'generation' needs a 'generation' section (tokenizer, context, max_new_tokens)")
        if self.task != "generation" and self.generation is not None:
            raise ValueError(f"a 'generation' section only applies to task 'generation', not {self.task!r}")
        configured = {**self.checks, **(self.slice_checks or {})}
        within = catalogue.MIN_WITHIN_TOLERANCE.name
        if within in configured and self.tolerance is None:
            raise ValueError(f"{within} needs a 'tolerance' section: {{atol: ..., rtol: ...}}")
        if self.batch_sizes is not None and self.task != "classification":
            raise ValueError("batch_sizes applies to task 'classification' (generation batches running prompts)")
        if self.batch_sizes is not None and len(set(self.batch_sizes)) != len(self.batch_sizes):
            raise ValueError(f"batch_sizes {self.batch_sizes} repeats a size")
        allowed = catalogue.names(task=self.task)
        wrong = [c for c in {**self.checks, **(self.slice_checks or {})} if c not in allowed]
        if wrong:
            raise ValueError(f"checks {wrong} do not apply to task {self.task!r} (use: {', '.join(allowed)})")
        return self

    @field_validator("checks", "slice_checks")
    @classmethod
    def limits_in_range(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for name, limit in (value or {}).items():
            proportion = name in catalogue.names() and catalogue.get(name).proportion
            if limit < 0 or (proportion and limit > 1):
                bound = "between 0 and 1" if proportion else "non-negative"
                raise ValueError(f"{name}: tolerance {limit} must be {bound}")
        return value


class Schedule(Strict):
    """Used by the daemon; validated here so that one file configures both."""

    poll_interval_seconds: float = Field(default=300, gt=0)
    # The daemon's first look at every target starts cold Ray workers on each node, so its probes
    # get at least this long (and at most 60 s or a poll interval, whichever is longer).
    startup_probe_seconds: float = Field(default=30, gt=0)
    nightly: str = "0 2 * * *"
    misfire_grace_seconds: float = Field(default=6 * 3600, ge=0)


class RaySettings(Strict):
    address: str | None = None  # None: start an embedded local Ray
    job_timeout_seconds: float = Field(default=1800, gt=0)
    num_cpus: int | None = Field(default=None, ge=1)
    # One-shot commands (validate, sweep, reproduce) on the embedded default share a local Ray kept
    # this long after its last use (scheduler/local_ray.py); 0 starts and stops one per command.
    keep_local_seconds: float = Field(default=600, ge=0)
    # A job that no node can take (its target's resource is nowhere) is recorded as
    # unschedulable after this long, never left pending.
    unschedulable_after_seconds: float = Field(default=300, gt=0)
    max_attempts: int = Field(default=3, ge=1, le=20)  # on worker or node failure
    retry_backoff_seconds: float = Field(default=5, ge=0)  # doubled after each failed attempt


class Tls(Strict):
    """TLS for the daemon's HTTP server; with client_cafile, client certificates are checked."""

    certfile: str
    keyfile: str
    client_cafile: str | None = None
    client_auth_required: bool = False


class MetricsSettings(Strict):
    # Per run, at most this many slice values are exported (the aggregate and failing ones first).
    max_slices_per_run: int = Field(default=64, ge=1, le=10_000)
    # The share of rows on which one candidate file may answer differently on two targets before it alerts.
    max_cross_target_disagreement: float = Field(default=0.01, ge=0, le=1)


class DaemonSettings(Strict):
    listen: str = Field(default="127.0.0.1:9108", pattern=r"^[^:\s]+:\d{1,5}$")
    drain_seconds: float = Field(default=20, ge=0)  # on SIGTERM: finish in-flight jobs this long, then cancel
    log_format: Literal["json", "text"] = "json"
    tls: Tls | None = None
    # POST /sweep needs "Authorization: Bearer <token>": the token is $REVALIDATOR_SWEEP_TOKEN, else this
    # file's first line (relative to the config's folder); the daemon creates the file (mode 0600) if missing.
    sweep_token_file: str = ".revalidator/sweep-token"
    # Host header values accepted besides IP literals, localhost and the listen host (DNS rebinding).
    allowed_hosts: list[str] = Field(default_factory=list)
    http_workers: int = Field(default=8, ge=1, le=256)  # threads serving requests (probes have their own two)
    http_timeout_seconds: float = Field(default=10, gt=0, le=300)  # a client that sends nothing this long is dropped


class Config(Strict):
    version: Literal[1]
    ledger: str = "sqlite:///.revalidator/ledger.db"
    batch_size: int = Field(default=1024, ge=1, le=1_000_000)
    ray: RaySettings = Field(default_factory=RaySettings)
    schedule: Schedule = Field(default_factory=Schedule)
    daemon: DaemonSettings = Field(default_factory=DaemonSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    # Which runners a component's change affects, beyond the defaults of scheduler/impact.py.
    impact: dict[str, list[Literal[RUNNERS]] | Literal["all", "gpu"]] = Field(default_factory=dict)  # type: ignore
    targets: dict[str, Target] = Field(min_length=1)
    models: dict[str, Model] = Field(min_length=1)
    suites: dict[str, Suite] = Field(min_length=1)

    @field_validator("targets", "models", "suites")
    @classmethod
    def names(cls, value: dict) -> dict:
        _check_names(value)
        return value


def _check_names(mapping: dict) -> None:
    bad = [k for k in mapping if not re.match(NAME_PATTERN, str(k))]
    if bad:
        raise ValueError(f"invalid name(s) {bad}: use letters, digits, '_', '.', '-' (at most 63)")
