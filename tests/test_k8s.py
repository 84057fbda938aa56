"""The Kubernetes fleet (deploy/k8s), checked offline: no cluster, no images.

- `kubectl kustomize` renders both overlays, and the rendered objects say what the fleet
  promises (headless gRPC Service, no unavailable replica in a rollout, the repository
  read-only, probes on the honest health endpoints, port 8000 closed, one GPU per pod);
- every built-in object validates against the Kubernetes OpenAPI schemas that
  kubernetes-validate ships (strict: unknown fields fail), for the oldest Kubernetes the
  manifests support and the newest the package knows;
- the two custom resources (Prometheus Operator's PrometheusRule and ServiceMonitor) have
  no schema there: their Kubernetes parts (metadata, label selector) are validated against
  the same schemas' ObjectMeta and LabelSelector, the rules in the PrometheusRule go
  through `promtool check rules`, and the ServiceMonitor must select the metrics Service
  and name its ports;
- `promtool test rules` runs the rules' unit tests (the autoscaler's recording rule on the
  quiet-model case, every alert), and the naive rules fail that case;
- the prometheus-adapter rule serves the recording rule under the HPA's metric name, and
  its query, templated as the adapter does, gives the recording rule's values;
- (integration, slow) every metric the dashboard, the rules, the adapter and the HPA name
  is one the real server exports.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from functools import cache
from pathlib import Path

import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
MONITORING = K8S / "base" / "monitoring"
RULES = MONITORING / "prometheusrule.yaml"
RULES_TEST = MONITORING / "prometheusrule.test.yml"
DASHBOARD = MONITORING / "shoprank-dashboard.json"
ADAPTER = K8S / "prometheus-adapter" / "values.yaml"
OVERLAYS = ("cpu", "gpu")
# The oldest Kubernetes the manifests use fields of (matchLabelKeys, nodeTaintsPolicy,
# unhealthyPodEvictionPolicy are all in 1.30's API), and the newest the package knows.
K8S_VERSIONS = ("1.30", "latest")
CRD_KINDS = {"PrometheusRule", "ServiceMonitor"}
RECORDED = "shoprank:queue_seconds_per_request:max_over_models"
HPA_TARGET_S = 0.020  # base/hpa.yaml: averageValue 20m

needs_kubectl = pytest.mark.skipif(
    shutil.which("kubectl") is None,
    reason="kubectl is not installed (it renders Kustomize offline: `kubectl kustomize`)",
)
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian: `apt-get install prometheus`; .ci/run does)",
)


# -- rendering ----------------------------------------------------------------------------
@cache
def rendered(overlay: str) -> tuple[dict, ...]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def one(objects: tuple[dict, ...], kind: str, name: str | None = None) -> dict:
    found = [
        o
        for o in objects
        if o["kind"] == kind and (name is None or o["metadata"]["name"].startswith(name))
    ]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def server(objects: tuple[dict, ...]) -> dict:
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "server")


def port_number(container: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    return next(p["containerPort"] for p in container["ports"] if p["name"] == port)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_the_fleet(overlay: str) -> None:
    objects = rendered(overlay)
    kinds = sorted(o["kind"] for o in objects)
    expected = ["Namespace", "ConfigMap", "ConfigMap", "Service", "Service", "Deployment"]
    expected += ["PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy"]
    expected += ["PrometheusRule", "ServiceMonitor"]
    assert kinds == sorted(expected)
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    grpc = one(objects, "Service", "shoprank-grpc")
    assert grpc["spec"]["clusterIP"] == "None"  # headless: DNS names every Ready pod
    assert grpc["spec"]["ports"][0]["port"] == 8001
    for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy"):
        for obj in (o for o in objects if o["kind"] == kind):
            selector = obj["spec"].get("selector") or obj["spec"]["podSelector"]
            selector = selector.get("matchLabels", selector)
            assert selector.items() <= labels.items(), obj["metadata"]["name"]

    container = server(objects)
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["models"].get("readOnly") is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert mounts["dshm"]["mountPath"] == "/dev/shm"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    sync = next(c for c in pod["initContainers"] if c["name"] == "model-sync")
    assert any(m["name"] == "models" and not m.get("readOnly") for m in sync["volumeMounts"])
    assert any(
        t["topologyKey"] == "kubernetes.io/hostname" for t in pod["topologySpreadConstraints"]
    )

    probes = {
        k: container[k]["httpGet"] for k in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    ports = {k: port_number(container, p["port"]) for k, p in probes.items()}
    paths = {k: p["path"] for k, p in probes.items()}
    if overlay == "cpu":  # the supervisor's honest readiness
        assert ports == dict.fromkeys(probes, 8003)
        assert paths == {
            "startupProbe": "/ready",
            "readinessProbe": "/ready",
            "livenessProbe": "/live",
        }
        assert container["image"].startswith("shoprank:")
    else:  # Triton's own health endpoints
        assert ports == dict.fromkeys(probes, 8000)
        assert paths["readinessProbe"] == "/v2/health/ready"
        assert paths["livenessProbe"] == "/v2/health/live"
        assert container["image"] == "nvcr.io/nvidia/tritonserver:24.10-py3"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 1

    # Triton's HTTP port (model control) is reachable by no rule of the NetworkPolicy.
    policy = one(objects, "NetworkPolicy")
    allowed = [
        port_number(container, p["port"]) for r in policy["spec"]["ingress"] for p in r["ports"]
    ]
    assert 8001 in allowed and 8002 in allowed and 8000 not in allowed
    assert all(r.get("from") for r in policy["spec"]["ingress"])  # never from everyone


# -- schemas ------------------------------------------------------------------------------
def k8s_schema_check(obj: dict, version: str) -> None:
    import kubernetes_validate

    wanted = kubernetes_validate.latest_version() if version == "latest" else version
    kubernetes_validate.validate(obj, wanted, strict=True)


def k8s_type_check(value: dict, type_file: str, version: str) -> None:
    """Validate a Kubernetes type embedded in a custom resource (ObjectMeta, LabelSelector)
    against kubernetes-validate's strict schema of that type."""
    import jsonschema
    import kubernetes_validate
    from kubernetes_validate.utils import schema_contents
    from referencing import Registry, Resource

    wanted = kubernetes_validate.latest_version() if version == "latest" else version
    wanted = ".".join(wanted.split(".")[:2])
    folder = f"kubernetes-json-schema/v{wanted}.0-local-strict"
    schema = schema_contents(f"{folder}/{type_file}", wanted)
    definitions = schema_contents(f"{folder}/_definitions.json", wanted)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    jsonschema.Draft202012Validator(schema, registry=registry).validate(value)


@needs_kubectl
@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_validate_against_kubernetes_schemas(overlay: str, version: str) -> None:
    objects = rendered(overlay)
    builtin = [o for o in objects if o["kind"] not in CRD_KINDS]
    assert len(builtin) == len(objects) - len(CRD_KINDS)
    for obj in builtin:
        k8s_schema_check(obj, version)


@needs_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_match_their_structure(overlay: str) -> None:
    objects = rendered(overlay)
    for kind in CRD_KINDS:
        obj = one(objects, kind)
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
        for version in K8S_VERSIONS:
            k8s_type_check(obj["metadata"], "objectmeta-meta-v1.json", version)

    rule = one(objects, "PrometheusRule")
    assert set(rule["spec"]) == {"groups"}  # the groups themselves: promtool (below)
    assert rule["spec"] == yaml.safe_load(RULES.read_text())["spec"]

    monitor = one(objects, "ServiceMonitor")["spec"]
    assert set(monitor) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    for version in K8S_VERSIONS:
        k8s_type_check(monitor["selector"], "labelselector-meta-v1.json", version)
    wanted = monitor["selector"]["matchLabels"].items()
    services = [
        o for o in objects if o["kind"] == "Service" and wanted <= o["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in services] == ["shoprank-metrics"]
    service_ports = {p["name"] for p in services[0]["spec"]["ports"]}
    for endpoint in monitor["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert endpoint["port"] in service_ports
        assert endpoint["path"].startswith("/")
        assert re.fullmatch(r"\d+[smh]", endpoint["interval"])
    # Every port of the metrics Service is scraped.
    assert {e["port"] for e in monitor["endpoints"]} == service_ports


# -- rules ----------------------------------------------------------------------------------
def rules_spec() -> dict:
    return yaml.safe_load(RULES.read_text())["spec"]


def promtool_test(
    folder: Path, spec: dict, test_file: Path = RULES_TEST
) -> subprocess.CompletedProcess:
    """`promtool test rules` of `test_file` against `spec` written out as rules.yml."""
    (folder / "rules.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    shutil.copy(test_file, folder / test_file.name)
    return subprocess.run(
        ["promtool", "test", "rules", str(folder / test_file.name)],
        capture_output=True,
        text=True,
    )


@needs_promtool
def test_promtool_checks_and_unit_tests_the_rules(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules_spec(), sort_keys=False))
    checked = subprocess.run(
        ["promtool", "check", "rules", str(tmp_path / "rules.yml")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool_test(tmp_path, rules_spec())
    assert tested.returncode == 0, tested.stdout + tested.stderr
    # Every alert of the rules has a case in the unit tests.
    alerts = {r["alert"] for g in rules_spec()["groups"] for r in g["rules"] if "alert" in r}
    cases = yaml.safe_load(RULES_TEST.read_text())["tests"]
    tested_alerts = {
        a["alertname"] for t in cases for a in t.get("alert_rule_test", []) if a["exp_alerts"]
    }
    assert alerts == tested_alerts


NAIVE_RULES = {
    # Summed queue time over summed requests, across the pod's models.
    "sum over sum": "sum by (namespace, pod) (rate(nv_inference_queue_duration_us[1m]))"
    " / sum by (namespace, pod) (rate(nv_inference_request_success[1m])) / 1e6",
    # Triton's autoscaling example: per-model ratios, averaged over the models.
    "average of ratios": "avg by (namespace, pod) (delta(nv_inference_queue_duration_us[1m])"
    " / (1 + delta(nv_inference_request_success[1m]))) / 1e6",
}


@needs_promtool
@pytest.mark.parametrize("naive", NAIVE_RULES)
def test_a_naive_rule_would_let_a_quiet_model_hide_a_queueing_one(
    tmp_path: Path, naive: str
) -> None:
    spec = rules_spec()
    record = next(r for g in spec["groups"] for r in g["rules"] if r.get("record") == RECORDED)
    record["expr"] = NAIVE_RULES[naive]
    tested = promtool_test(tmp_path, spec)
    output = tested.stdout + tested.stderr
    assert tested.returncode != 0, output
    # The queueing pod reads under the HPA's target: it would never have scaled.
    got = output.split(f'expr: "{RECORDED}"', 1)[1].split("got:", 1)[1]
    value = float(re.search(r'pod="a"\} ([^,\s]+)', got).group(1))
    assert value < HPA_TARGET_S


def adapter_rule() -> dict:
    [rule] = yaml.safe_load(ADAPTER.read_text())["rules"]["custom"]
    return rule


def adapter_query(rule: dict, namespace: str, pods: list[str]) -> str:
    """The adapter's metricsQuery for one namespace's pods, templated as the adapter does."""
    series = rule["seriesQuery"].split("{", 1)[0]
    matchers = f'namespace="{namespace}",pod=~"{"|".join(pods)}"'
    query = rule["metricsQuery"]
    for key, value in (("Series", series), ("LabelMatchers", matchers), ("GroupBy", "pod")):
        query = query.replace(f"<<.{key}>>", value)
    assert "<<" not in query, query
    return query


@needs_kubectl
def test_adapter_rule_serves_the_recording_rule_under_the_hpa_metric_name() -> None:
    import promql_parser

    rule = adapter_rule()
    series = rule["seriesQuery"].split("{", 1)[0]
    assert series == RECORDED and re.fullmatch(rule["name"]["matches"], RECORDED)
    recorded = {r.get("record") for g in rules_spec()["groups"] for r in g["rules"]}
    assert RECORDED in recorded
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    promql_parser.parse(adapter_query(rule, "shoprank", ["a", "b"]))
    for overlay in OVERLAYS:
        hpa = one(rendered(overlay), "HorizontalPodAutoscaler")["spec"]
        pods = [m["pods"] for m in hpa["metrics"] if m["type"] == "Pods"]
        assert [p["metric"]["name"] for p in pods] == [rule["name"]["as"]]
        assert (
            hpa["scaleTargetRef"]["name"]
            == one(rendered(overlay), "Deployment")["metadata"]["name"]
        )
        assert {m["type"] for m in hpa["metrics"]} == {"Pods", "Resource"}  # CPU fallback


@needs_promtool
def test_adapter_query_gives_the_recording_rules_values(tmp_path: Path) -> None:
    """The adapter's templated query, evaluated by promtool over the quiet-model series
    (with the recording rule), gives each pod the value the rules' unit test expects."""
    cases = yaml.safe_load(RULES_TEST.read_text())
    case = next(t for t in cases["tests"] if t.get("promql_expr_test"))
    [check] = [c for c in case["promql_expr_test"] if c["expr"] == RECORDED]
    # The adapter groups by pod alone: {pod="a"}, {pod="b"}.
    expected = [
        {"labels": "{" + re.search(r'pod="[^"]+"', s["labels"]).group(0) + "}", "value": s["value"]}
        for s in check["exp_samples"]
    ]
    test = {
        "rule_files": cases["rule_files"],
        "evaluation_interval": cases["evaluation_interval"],
        "tests": [
            {
                "interval": case["interval"],
                "input_series": case["input_series"],
                "promql_expr_test": [
                    {
                        "expr": adapter_query(adapter_rule(), "shoprank", ["a", "b"]),
                        "eval_time": check["eval_time"],
                        "exp_samples": expected,
                    }
                ],
            }
        ],
    }
    test_file = tmp_path / "adapter.test.yml"
    test_file.write_text(yaml.safe_dump(test, sort_keys=False))
    (tmp_path / "work").mkdir()
    tested = promtool_test(tmp_path / "work", rules_spec(), test_file)
    assert tested.returncode == 0, tested.stdout + tested.stderr


# -- images ---------------------------------------------------------------------------------
def test_serving_requirements_follow_pyproject() -> None:
    """deploy/requirements-serve.txt pins what the image installs with the same ranges as
    pyproject.toml, so the image serves what the tests ran."""
    from packaging.requirements import Requirement

    declared = {
        (r := Requirement(line)).name: r.specifier
        for line in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    lines = (ROOT / "deploy" / "requirements-serve.txt").read_text().splitlines()
    serving = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    assert serving
    for requirement in serving:
        assert requirement.name in declared, requirement.name
        assert requirement.specifier == declared[requirement.name], requirement.name
    assert "torch" not in {r.name for r in serving}
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert "deploy/requirements-serve.txt" in dockerfile
    for pinned in re.findall(r'"((?:nvidia-pytriton|onnxruntime)[^"]*)"', dockerfile):
        requirement = Requirement(pinned)
        assert requirement.specifier == declared[requirement.name], pinned


# -- metric names against the real server ------------------------------------------------------
def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    import promql_parser

    names: set[str] = set()

    def visit(node) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def named_metrics() -> dict[str, set[str]]:
    """Metric names by where deploy/ names them: dashboard, rules, adapter, HPA."""
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = [r["expr"] for g in rules_spec()["groups"] for r in g["rules"]]
    rule = adapter_rule()
    hpa = yaml.safe_load((K8S / "base" / "hpa.yaml").read_text())["spec"]["metrics"]
    # The HPA's custom metric is the adapter's name for its series.
    hpa_names = {m["pods"]["metric"]["name"] for m in hpa if m["type"] == "Pods"}
    assert hpa_names == {rule["name"]["as"]}
    return {
        "dashboard": set().union(*(metric_names(e.replace("$namespace", ".*")) for e in exprs)),
        "rules": set().union(*(metric_names(e) for e in rules)),
        "adapter": metric_names(rule["seriesQuery"])
        | metric_names(adapter_query(rule, "x", ["y"])),
    }


def supervisor_metrics() -> str:
    """What the supervisor's /metrics serves, from its own HTTP endpoint on loopback."""
    from shoprank.model_repository.supervisor import Supervisor, serve_health
    from shoprank.ops.tritonserver import free_ports

    [port] = free_ports(1)
    supervisor = Supervisor(Path("unused"), log_path=Path("unused.log"))
    httpd = serve_health(supervisor, "127.0.0.1", port)
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()
    finally:
        httpd.shutdown()


@pytest.mark.integration
@pytest.mark.slow
def test_every_metric_named_in_deploy_is_exported(ensemble_server) -> None:
    from shoprank_client import SearchClient, SearchError

    with SearchClient(ensemble_server.grpc_url) as client:  # lazily created series first
        client.search("red sofa", history=[100005], top_k=4)
        client.rerank("lamp", [100005, 100002, 999999], top_k=2)
        client.recommend(history=[100005, 100002], top_k=3)
        with pytest.raises(SearchError):
            client.search("   ")
    with urllib.request.urlopen(ensemble_server.metrics_url, timeout=5) as r:
        exposed = r.read().decode() + supervisor_metrics()
    series = {line.split("{")[0].split(" ")[0] for line in exposed.splitlines() if line[:1] != "#"}
    recorded = {r["record"] for g in rules_spec()["groups"] for r in g["rules"] if "record" in r}

    named = named_metrics()
    assert all(named.values())
    for where, names in named.items():
        assert sorted(names - series - recorded) == [], where
    assert len(named["dashboard"]) >= 12
    assert {"shoprank_supervisor_ready", "shoprank_invalid_requests_total"} <= named["rules"]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("unshare") is None or os.geteuid() != 0,
    reason="a read-only bind mount needs root and unshare (util-linux)",
)
def test_the_server_serves_a_read_only_repository(tiny_artifacts, tmp_path: Path) -> None:
    """The pods mount the model repository read-only: the server must load and serve it."""
    from shoprank.ops.tritonserver import free_ports
    from shoprank_client import SearchClient

    mounted = tmp_path / "models"
    mounted.mkdir()
    http, grpc, metrics, health = free_ports(4)
    pidfile = tmp_path / "server.pid"
    start = [
        sys.executable, "-m", "shoprank.model_repository.server", "start",
        f"--repository={mounted}", f"--pidfile={pidfile}", f"--log={tmp_path / 'triton.log'}",
        f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
        f"--health-port={health}",
    ]  # fmt: skip
    # In a mount namespace of its own, which the detached supervisor keeps alive.
    script = (
        f"mount --bind {tiny_artifacts.repository('cpu')} {mounted}"
        f" && mount -o remount,ro,bind {mounted} && exec {shlex.join(start)}"
    )
    started = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True
    )
    try:
        assert started.returncode == 0, started.stderr[-3000:]
        with SearchClient(f"localhost:{grpc}") as client:
            assert len(client.search("red sofa", top_k=3)) == 3
    finally:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "shoprank.model_repository.server",
                "stop",
                f"--pidfile={pidfile}",
            ],
            capture_output=True,
        )
