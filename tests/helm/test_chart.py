"""The Helm chart, rendered by a real helm: lint, core objects against Kubernetes' schemas, the CRD
objects against their schemas, bad values refused, and targets that cannot drift from worker groups."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from scheduler.config import load_config
from tests.conftest import REPO

CHART = REPO / "helm" / "revalidator"
EXAMPLE = REPO / "helm" / "examples" / "three-targets.yaml"
CRDS = REPO / "tests" / "fixtures" / "crds"


def helm_binary() -> str:
    for candidate in (os.environ.get("HELM"), shutil.which("helm"), str(REPO / ".tools" / "helm")):
        if candidate and Path(candidate).is_file():
            return candidate
    if os.environ.get("CI"):
        pytest.fail("helm is not installed (scripts/setup puts it in .tools/helm)")
    pytest.skip("helm is not installed (scripts/setup puts it in .tools/helm)")


def helm(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, **{k: str(tmp / "helm-home") for k in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME",
                                                                   "HELM_DATA_HOME")}}
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, env=env)


def render(tmp: Path, *values: str, sets: tuple[str, ...] = ()) -> list[dict]:
    args = ["template", "rv", str(CHART)]
    for v in values:
        args += ["-f", v]
    for s in sets:
        args += ["--set", s]
    done = helm(*args, tmp=tmp)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def rendered_config(docs: list[dict], tmp: Path):
    config_map = next(d for d in by_kind(docs, "ConfigMap") if "targets.yaml" in d["data"])
    path = tmp / "targets.yaml"
    path.write_text(config_map["data"]["targets.yaml"])
    return load_config(path, check_files=False)  # the daemon's own validation, minus the artifact files


@pytest.mark.parametrize("values", [(), (str(EXAMPLE),)], ids=["defaults", "three-targets"])
def test_lint_strict(tmp_path: Path, values: tuple[str, ...]) -> None:
    args = ["lint", "--strict", str(CHART)] + [a for v in values for a in ("-f", v)]
    done = helm(*args, tmp=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("values", [(), (str(EXAMPLE),)], ids=["defaults", "three-targets"])
def test_core_objects_pass_kubernetes_validate_strict(tmp_path: Path, values: tuple[str, ...]) -> None:
    docs = render(tmp_path, *values)
    core = [d for d in docs if d["apiVersion"] in ("v1", "apps/v1", "networking.k8s.io/v1")]
    assert {d["kind"] for d in core} == {"ConfigMap", "Secret", "Service", "ServiceAccount", "StatefulSet",
                                        "NetworkPolicy"}
    path = tmp_path / "core.yaml"
    path.write_text(yaml.safe_dump_all(core))
    validator = Path(sys.executable).parent / "kubernetes-validate"
    done = subprocess.run([str(validator), "--strict", "-k", "1.31.0", str(path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == len(core)


@pytest.mark.parametrize("values", [(), (str(EXAMPLE),)], ids=["defaults", "three-targets"])
def test_monitoring_objects_match_the_published_crd_schemas(tmp_path: Path, values: tuple[str, ...]) -> None:
    node_modules = REPO / ".tools" / "node" / "node_modules"
    if not (node_modules / "@kubernetes-models" / "prometheus-operator").is_dir() or shutil.which("node") is None:
        if os.environ.get("CI"):
            pytest.fail("the prometheus-operator CRD schemas are not installed (scripts/setup)")
        pytest.skip("the prometheus-operator CRD schemas are not installed (scripts/setup)")
    docs = render(tmp_path, *values)
    objects = by_kind(docs, "ServiceMonitor") + by_kind(docs, "PrometheusRule")
    lines = "".join(json.dumps(o) + "\n" for o in objects)
    script = str(REPO / "tests" / "helm" / "validate_crds.mjs")
    done = subprocess.run(["node", script, str(node_modules)], input=lines, text=True, capture_output=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.split("\n")[:2] == ["ok ServiceMonitor", "ok PrometheusRule"]
    # and the check can fail: a rule whose `for` is not a duration is refused
    broken = json.loads(json.dumps(by_kind(docs, "PrometheusRule")[0]))
    broken["spec"]["groups"][0]["rules"][0]["for"] = "soon"
    done = subprocess.run(["node", script, str(node_modules)], input=json.dumps(broken), text=True,
                          capture_output=True)
    assert done.returncode == 1 and "for must match pattern" in done.stdout


@pytest.mark.parametrize("values", [(), (str(EXAMPLE),)], ids=["defaults", "three-targets"])
def test_raycluster_matches_its_schema(tmp_path: Path, values: tuple[str, ...]) -> None:
    docs = render(tmp_path, *values)
    objects = by_kind(docs, "RayCluster")
    assert len(objects) == 1
    jsonschema.validate(objects[0], json.loads((CRDS / "raycluster.schema.json").read_text()))


def test_targets_and_worker_groups_cannot_drift(tmp_path: Path) -> None:
    docs = render(tmp_path, str(EXAMPLE))
    config = rendered_config(docs, tmp_path).config
    groups = by_kind(docs, "RayCluster")[0]["spec"]["workerGroupSpecs"]
    from_groups = {g["groupName"]: set(json.loads(g["rayStartParams"]["resources"])) for g in groups}
    from_config = {name: {t.where.resource} for name, t in config.targets.items()}
    assert from_groups == from_config == {"h100": {"target:h100"}, "l4": {"target:l4"},
                                          "cpu-avx512": {"target:cpu-avx512"}}
    h100 = next(g for g in groups if g["groupName"] == "h100")
    container = h100["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1 and h100["rayStartParams"]["num-gpus"] == "1"
    assert "gpu-worker" in container["image"]
    assert h100["template"]["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    cpu = next(g for g in groups if g["groupName"] == "cpu-avx512")
    assert "nvidia.com/gpu" not in cpu["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert config.targets["l4"].options.onnxruntime.providers[0] == "TensorrtExecutionProvider"
    assert config.ray.address == "rv-revalidator-ray-head-svc:6379"


def test_alerts_and_dashboard_are_embedded_unchanged(tmp_path: Path) -> None:
    assert (CHART / "files" / "revalidator.rules.yaml").read_bytes() == (REPO / "alerts" / "revalidator.rules.yaml"
                                                                         ).read_bytes()
    assert (CHART / "files" / "revalidator-dashboard.json").read_bytes() == \
        (REPO / "dashboards" / "revalidator.json").read_bytes()
    docs = render(tmp_path, sets=("prometheusRule.release=prom", "serviceMonitor.release=prom"))
    rule = by_kind(docs, "PrometheusRule")[0]
    assert rule["spec"] == yaml.safe_load((REPO / "alerts" / "revalidator.rules.yaml").read_text())
    assert rule["metadata"]["labels"]["release"] == "prom"
    assert by_kind(docs, "ServiceMonitor")[0]["metadata"]["labels"]["release"] == "prom"
    dashboard = next(d for d in by_kind(docs, "ConfigMap") if "revalidator.json" in d["data"])
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["revalidator.json"])["uid"] == "revalidator"


def test_secure_defaults(tmp_path: Path) -> None:
    docs = render(tmp_path)
    pod = by_kind(docs, "StatefulSet")[0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"]
    assert security["capabilities"] == {"drop": ["ALL"]} and security["seccompProfile"]["type"] == "RuntimeDefault"
    assert not security["allowPrivilegeEscalation"] and pod["automountServiceAccountToken"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    config = rendered_config(docs, tmp_path).config
    assert pod["terminationGracePeriodSeconds"] > config.daemon.drain_seconds
    assert by_kind(docs, "StatefulSet")[0]["spec"]["replicas"] == 1
    assert not by_kind(docs, "Role") and not by_kind(docs, "RoleBinding")
    for group in by_kind(docs, "RayCluster")[0]["spec"]["workerGroupSpecs"]:
        assert group["template"]["spec"]["containers"][0]["securityContext"]["runAsNonRoot"]


def test_sweep_token_is_generated_in_a_secret_mounted_where_the_config_reads_it(tmp_path: Path) -> None:
    import base64

    docs = render(tmp_path)
    secret = next(d for d in by_kind(docs, "Secret") if d["metadata"]["name"] == "rv-revalidator-sweep-token")
    assert len(base64.b64decode(secret["data"]["token"])) == 48
    pod = by_kind(docs, "StatefulSet")[0]["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == secret["metadata"]["name"])
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    config = rendered_config(docs, tmp_path).config
    assert config.daemon.sweep_token_file == f"{mount['mountPath']}/token" and mount["readOnly"]
    assert "rv-revalidator.default.svc" in config.daemon.allowed_hosts
    # An existing Secret instead: none generated, that one mounted.
    docs = render(tmp_path, sets=("daemon.sweepTokenSecret=my-token",))
    assert not [d for d in by_kind(docs, "Secret") if d["metadata"]["name"].endswith("sweep-token")]
    pod = by_kind(docs, "StatefulSet")[0]["spec"]["template"]["spec"]
    assert {"secretName": "my-token", "defaultMode": 0o400} in [v.get("secret") for v in pod["volumes"]]


def test_ray_auth_token_reaches_the_daemon_and_every_node(tmp_path: Path) -> None:
    docs = render(tmp_path, str(EXAMPLE), sets=("ray.authTokenSecret=ray-token",))
    token = {"name": "RAY_AUTH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "ray-token", "key": "token"}}}
    ray = by_kind(docs, "RayCluster")[0]["spec"]
    pods = [by_kind(docs, "StatefulSet")[0]["spec"]["template"]["spec"], ray["headGroupSpec"]["template"]["spec"]]
    pods += [g["template"]["spec"] for g in ray["workerGroupSpecs"]]
    assert len(pods) == 5 and all(token in pod["containers"][0]["env"] for pod in pods)


def test_existing_ray_cluster_and_external_ledger(tmp_path: Path) -> None:
    docs = render(tmp_path, sets=("ray.create=false", "ray.address=ray-head.ray:6379",
                                  "ledger.existingSecret=ledger-db"))
    assert not by_kind(docs, "RayCluster")
    assert rendered_config(docs, tmp_path).config.ray.address == "ray-head.ray:6379"
    env = by_kind(docs, "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "REVALIDATOR_LEDGER_URL",
            "valueFrom": {"secretKeyRef": {"name": "ledger-db", "key": "url"}}} in env


@pytest.mark.parametrize("sets,message", [
    (("daemon.port=80",), "daemon.port: Must be greater than or equal to 1024"),
    (("targets[0].name=GPU_A", "targets[0].runners={onnxruntime}", "targets[0].gpus=0", "targets[0].replicas=1",
      "targets[0].minReplicas=0", "targets[0].maxReplicas=1", "targets[0].resources.limits.cpu=1"),
     "targets.0.name: Does not match pattern"),
    (("targets[0].gpus=-1",), "targets.0.gpus: Must be greater than or equal to 0"),
    (("ray.create=false",), "ray.address: Does not match pattern"),  # an existing cluster needs its address
    (("serviceMonitor.interval=often",), "serviceMonitor.interval: Does not match pattern"),
    (("colour=blue",), "Additional property colour is not allowed"),
    (("ledger.size=lots",), "ledger.size: Does not match pattern"),
])
def test_bad_values_are_refused_with_a_clear_message(tmp_path: Path, sets: tuple[str, ...], message: str) -> None:
    args = ["template", "rv", str(CHART)] + [a for s in sets for a in ("--set", s)]
    done = helm(*args, tmp=tmp_path)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_every_worker_keeps_its_baseline_cache_on_a_bounded_volume(tmp_path: Path) -> None:
    def workers(*sets: str) -> list[dict]:
        docs = render(tmp_path, str(EXAMPLE), sets=sets)
        return [g["template"]["spec"] for g in by_kind(docs, "RayCluster")[0]["spec"]["workerGroupSpecs"]]

    pods = workers()
    assert pods
    for pod in pods:
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[env["REVALIDATOR_BASELINE_CACHE"]])
        assert volume["emptyDir"]["sizeLimit"] == "3Gi" and env["REVALIDATOR_BASELINE_CACHE_BYTES"] == "2147483648"
    off = workers("baselineCache.maxBytes=0")
    assert all({"name": "REVALIDATOR_BASELINE_CACHE", "value": "off"} in pod["containers"][0]["env"] for pod in off)
