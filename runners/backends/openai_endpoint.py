"""A model behind an OpenAI-compatible HTTP endpoint (vLLM, TGI, SGLang, llama.cpp's server,
`transformers serve`): what a serving stack actually returns, validated against the kept baseline.

The artifact is a small endpoint descriptor file (YAML or JSON), so the planner hashes it like
any artifact: the URL, the model name and the request options are part of the job key. What the
server says about itself (`/v1/models`, the model id it answers with, a system fingerprint) goes
into the provenance, since it is only known once the job asks.

    base_url: http://127.0.0.1:8000/v1   # required
    model: smollm2-int8                  # required: the name the server serves it under
    top_logprobs: 5                      # 0: do not ask (OpenAI allows at most 20)
    seed: 0                              # null: do not send one
    timeout_seconds: 120                 # per request
    retries: 3                           # on a refused connection, a timeout, 429 or 5xx
    backoff_seconds: 1.0                 # doubled after each failed attempt
    concurrency: 1                       # requests in flight (a server may batch them: outputs can move)
    api_key_env: SERVING_API_KEY         # the environment variable holding a bearer token (never the token)

Standard library only (urllib). A server that cannot be reached is an infrastructure fault of
the target (BackendUnavailable); a server that rejects the model name or the request is bad input
(ArtifactError), both naming the endpoint.
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.backends.base import ArtifactError, BackendUnavailable

DEFAULTS: dict[str, Any] = {"top_logprobs": 5, "seed": 0, "timeout_seconds": 120.0, "retries": 3,
                            "backoff_seconds": 1.0, "concurrency": 1, "api_key_env": None}
REQUIRED = ("base_url", "model")
_RETRIED_STATUS = {408, 429, 500, 502, 503, 504}


class EndpointUnreachable(BackendUnavailable):
    """The endpoint did not answer (refused, timed out, or kept failing with 5xx)."""


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint descriptor."""

    path: str
    base_url: str
    model: str
    top_logprobs: int = 5
    seed: int | None = 0
    timeout_seconds: float = 120.0
    retries: int = 3
    backoff_seconds: float = 1.0
    concurrency: int = 1
    api_key_env: str | None = None

    @classmethod
    def load(cls, path: str | Path) -> "Endpoint":
        path = Path(path)
        if not path.is_file():
            raise ArtifactError(f"{path}: endpoint descriptor not found (a YAML or JSON file with base_url and model)")
        text = path.read_text()
        try:
            if path.suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
            raise ArtifactError(f"{path}: not a valid endpoint descriptor ({exc})") from exc
        if not isinstance(data, dict):
            raise ArtifactError(f"{path}: an endpoint descriptor is a mapping with base_url and model")
        unknown = sorted(set(data) - set(REQUIRED) - set(DEFAULTS))
        if unknown:
            raise ArtifactError(f"{path}: unknown key(s) {unknown} (known: {', '.join(REQUIRED + tuple(DEFAULTS))})")
        missing = [k for k in REQUIRED if not isinstance(data.get(k), str) or not data[k]]
        if missing:
            raise ArtifactError(f"{path}: {', '.join(missing)} must be given as non-empty strings")
        if not data["base_url"].startswith(("http://", "https://")):
            raise ArtifactError(f"{path}: base_url {data['base_url']!r} must start with http:// or https://")
        merged = {**DEFAULTS, **data}
        checks = (("top_logprobs", 0, 20), ("retries", 0, 20), ("concurrency", 1, 256))
        for key, low, high in checks:
            if not isinstance(merged[key], int) or not low <= merged[key] <= high:
                raise ArtifactError(f"{path}: {key} must be an integer from {low} to {high}, not {merged[key]!r}")
        for key in ("timeout_seconds", "backoff_seconds"):
            if not isinstance(merged[key], (int, float)) or merged[key] < 0 or (key == "timeout_seconds"
                                                                                 and merged[key] == 0):
                raise ArtifactError(f"{path}: {key} must be a positive number, not {merged[key]!r}")
        if merged["seed"] is not None and not isinstance(merged["seed"], int):
            raise ArtifactError(f"{path}: seed must be an integer or null")
        merged["base_url"] = merged["base_url"].rstrip("/")
        return cls(path=str(path), **merged)


@dataclass
class Completion:
    """One prompt's answer: the text, why it ended, and, where the server returned them, its tokens
    with their log-probabilities and the top alternatives at every step."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    model: str | None
    system_fingerprint: str | None = None
    tokens: list[str] | None = None
    logprobs: list[float] | None = None
    top: list[dict[str, float]] | None = None  # per step: token -> logprob
    extra: dict[str, Any] = field(default_factory=dict)


class EndpointClient:
    """Greedy requests to one endpoint, with timeouts, retries and named errors."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.logprobs_refused = False

    # -- transport --------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.endpoint.api_key_env:
            token = os.environ.get(self.endpoint.api_key_env)
            if not token:
                raise ArtifactError(f"{self.endpoint.path}: api_key_env names {self.endpoint.api_key_env}, "
                                    f"which is not set in the job's environment")
            headers["Authorization"] = f"Bearer {token}"
        return headers

    def _call(self, method: str, route: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One JSON request; retried with backoff on what a retry can cure."""
        url = f"{self.endpoint.base_url}{route}"
        data = None if body is None else json.dumps(body).encode()
        delay, last = self.endpoint.backoff_seconds, ""
        for attempt in range(self.endpoint.retries + 1):
            if attempt:
                time.sleep(delay)  # the backoff itself: nothing observable to wait on
                delay *= 2
            request = urllib.request.Request(url, data=data, method=method, headers=self._headers())
            try:
                with urllib.request.urlopen(request, timeout=self.endpoint.timeout_seconds) as response:
                    payload = response.read()
            except urllib.error.HTTPError as exc:
                detail = _detail(exc)
                if exc.code in _RETRIED_STATUS:
                    last = f"HTTP {exc.code} {detail}"
                    continue
                raise _Rejected(exc.code, detail) from exc
            except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as exc:
                last = str(getattr(exc, "reason", exc))
                continue
            try:
                return json.loads(payload)
            except ValueError as exc:
                raise ArtifactError(f"{url}: the endpoint answered with something other than JSON "
                                    f"({payload[:200]!r})") from exc
        raise EndpointUnreachable(f"{url}: no answer after {self.endpoint.retries + 1} attempt(s) "
                                  f"(timeout {self.endpoint.timeout_seconds:g} s): {last}")

    # -- what the server says about itself --------------------------------------------------------
    def models(self) -> dict[str, Any]:
        """`/v1/models` as the server lists it; an error is recorded, not raised (some servers
        list only their cache, or fail on it, while serving the pinned model fine)."""
        try:
            listed = self._call("GET", "/models")
        except _Rejected as exc:
            return {"error": f"HTTP {exc.status} {exc.detail}"[:300]}
        except ArtifactError as exc:
            return {"error": str(exc)[:300]}
        ids = [m.get("id") for m in listed.get("data") or [] if isinstance(m, dict)]
        if ids and self.endpoint.model not in ids:
            raise ArtifactError(f"{self.endpoint.path}: model {self.endpoint.model!r} is not served at "
                                f"{self.endpoint.base_url} (it lists {ids[:20]})")
        return {"ids": ids, "data": listed.get("data") or []}

    # -- generation -------------------------------------------------------------------------------
    def complete(self, prompts: list[str], caps: list[int], chat: bool, system_prompt: str | None,
                 stop: str | None) -> list[Completion]:
        """Every prompt, greedily, in the prompts' order."""
        def one(i: int) -> Completion:
            return self._complete(prompts[i], caps[i], chat, system_prompt, stop)

        if self.endpoint.concurrency == 1:
            return [one(i) for i in range(len(prompts))]
        with ThreadPoolExecutor(self.endpoint.concurrency) as pool:
            return list(pool.map(one, range(len(prompts))))

    def _body(self, prompt: str, cap: int, chat: bool, system_prompt: str | None, stop: str | None,
              logprobs: bool) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.endpoint.model, "max_tokens": cap, "temperature": 0}
        if chat:
            body["messages"] = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + \
                               [{"role": "user", "content": prompt}]
        else:
            body["prompt"] = prompt
        if stop:
            body["stop"] = [stop]
        if self.endpoint.seed is not None:
            body["seed"] = self.endpoint.seed
        if logprobs:
            if chat:
                body["logprobs"], body["top_logprobs"] = True, self.endpoint.top_logprobs
            else:
                body["logprobs"] = self.endpoint.top_logprobs
        return body

    def _complete(self, prompt: str, cap: int, chat: bool, system_prompt: str | None,
                  stop: str | None) -> Completion:
        route = "/chat/completions" if chat else "/completions"
        ask = self.endpoint.top_logprobs > 0 and not self.logprobs_refused
        try:
            answer = self._call("POST", route, self._body(prompt, cap, chat, system_prompt, stop, ask))
        except _Rejected as exc:
            if ask and "logprob" in exc.detail.lower():  # a server that refuses the field: ask without it
                self.logprobs_refused = True
                return self._complete(prompt, cap, chat, system_prompt, stop)
            raise ArtifactError(f"{self.endpoint.path}: {self.endpoint.base_url}{route} rejected the request "
                                f"for model {self.endpoint.model!r}: HTTP {exc.status} {exc.detail}") from None
        return parse_completion(answer, chat, f"{self.endpoint.base_url}{route}")


class _Rejected(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status} {detail}")
        self.status, self.detail = status, detail


def _detail(exc: urllib.error.HTTPError) -> str:
    try:
        raw = exc.read().decode(errors="replace")
    except OSError:
        return exc.reason or ""
    try:
        data = json.loads(raw)
    except ValueError:
        return raw[:300]
    if isinstance(data, dict):
        detail = data.get("detail") or data.get("error") or data.get("message") or data
        if isinstance(detail, dict):
            detail = detail.get("message") or detail
        return str(detail)[:300]
    return raw[:300]


def parse_completion(answer: dict[str, Any], chat: bool, where: str) -> Completion:
    """A chat or completions response (OpenAI's shapes) as a Completion; the logprobs where given."""
    try:
        choice = answer["choices"][0]
    except (KeyError, IndexError, TypeError):
        raise ArtifactError(f"{where}: the response has no choices ({str(answer)[:200]})") from None
    text = (choice.get("message") or {}).get("content") if chat else choice.get("text")
    out = Completion(text=text or "", finish_reason=choice.get("finish_reason"),
                     prompt_tokens=(answer.get("usage") or {}).get("prompt_tokens"), model=answer.get("model"),
                     system_fingerprint=answer.get("system_fingerprint"))
    logprobs = choice.get("logprobs")
    if not logprobs:
        return out
    if chat:  # {"content": [{"token", "logprob", "top_logprobs": [{"token", "logprob"}]}]}
        steps = logprobs.get("content") or []
        if steps:
            out.tokens = [s["token"] for s in steps]
            out.logprobs = [float(s["logprob"]) for s in steps]
            tops = [s.get("top_logprobs") or [] for s in steps]
            out.top = [{t["token"]: float(t["logprob"]) for t in top} for top in tops] if any(tops) else None
    else:  # {"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: logprob}, ...]}
        if logprobs.get("tokens"):
            out.tokens = list(logprobs["tokens"])
            out.logprobs = [float(v) for v in logprobs.get("token_logprobs") or []]
            tops = logprobs.get("top_logprobs") or []
            out.top = [{k: float(v) for k, v in (top or {}).items()} for top in tops] if tops else None
    return out
