"""The Helm chart, the Dockerfile: linted, rendered and validated by the real tools, and the
rendered sidecar started exactly as the pod would start it."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import free_port, needs_tool

helm = pytest.importorskip("helm_python", reason="helm-python-sdk is not installed")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "hookshield"
OPTIONS: dict[str, dict[str, Any]] = {
    "default": {},
    "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                   "grafanaDashboard": {"enabled": True}},
    "secrets": {"secrets": {"existingSecret": "hookshield-signing"},
                "adminToken": {"existingSecret": "hookshield-admin"},
                "redis": {"existingSecret": "hookshield-redis"}},
    "redis-url": {"redis": {"url": "redis://redis:6379/0"}},
    "regular-container": {"nativeSidecar": False},
    "native-sidecar": {"nativeSidecar": True},
    "no-example": {"example": {"enabled": False}},
}  # fmt: skip


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    chart = helm.Chart.load(str(CHART))
    try:
        out = chart.render(values or {}, name="demo", namespace="platform", is_install=True)
    finally:
        chart.close()
    docs = []
    for path, text in sorted(out.items()):
        if not path.endswith(".txt"):
            docs += [doc for doc in yaml.safe_load_all(text) if doc]
    return docs


def one(docs: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].endswith(suffix)]
    return found


def sidecar(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The hookshield container of the example Deployment, and where it sits."""
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    for place in ("initContainers", "containers"):
        for container in spec.get(place, []):
            if container["name"] == "hookshield":
                return container, place
    raise AssertionError("no hookshield container")


@pytest.mark.parametrize("kube", ["v1.28.0", "v1.29.0", "v1.30.0"])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_lint_strict_is_clean(option: str, kube: str) -> None:
    """`helm lint --strict` finds no warning or error, for every option and Kubernetes version."""
    report = helm.lint(str(CHART), OPTIONS[option], strict=True, kube_version=kube)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("version", ["1.29", "1.30"])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_rendered_manifests_validate(option: str, version: str) -> None:
    """Every rendered built-in resource passes the Kubernetes schemas (strict: no unknown fields)."""
    docs = render(OPTIONS[option])
    assert docs
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRDs: checked below
        kubernetes_validate.validate(doc, version, strict=True)


def test_default_render_is_a_hardened_native_sidecar() -> None:
    """Probes on /healthz and /readyz, non-root, read-only root fs, config mounted as a directory."""
    container, place = sidecar(render())
    assert (place, container["restartPolicy"]) == ("initContainers", "Always")
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] != 0
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    [config] = [m for m in container["volumeMounts"] if m["name"] == "hookshield-config"]
    assert config["mountPath"] == "/etc/hookshield"
    assert "subPath" not in config
    assert all("subPath" not in m for m in container["volumeMounts"])


def test_regular_container_when_native_sidecars_are_off() -> None:
    """nativeSidecar: false puts hookshield among the containers, without restartPolicy."""
    container, place = sidecar(render({"nativeSidecar": False}))
    assert place == "containers"
    assert "restartPolicy" not in container


def test_secrets_come_from_secret_references_only() -> None:
    """Admin token and Redis URL from secretKeyRef; signing secrets mounted as files; no values."""
    docs = render(OPTIONS["secrets"])
    container, _ = sidecar(docs)
    env = {e["name"]: e for e in container["env"]}
    assert env["HOOKSHIELD_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"] == {
        "name": "hookshield-admin",
        "key": "token",
    }
    assert env["HOOKSHIELD_REDIS_URL"]["valueFrom"]["secretKeyRef"]["name"] == "hookshield-redis"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["hookshield-secrets"]["mountPath"] == "/var/run/secrets/hookshield"
    config = yaml.safe_load(one(docs, "ConfigMap", "-config")["data"]["hookshield.yaml"])
    assert config["admin"] == {"token_env": "HOOKSHIELD_ADMIN_TOKEN"}


def test_rendered_config_passes_check_config(tmp_path: Path) -> None:
    """The ConfigMap's hookshield.yaml is valid for `hookshield check-config`."""
    for option in ("default", "secrets"):
        data = one(render(OPTIONS[option]), "ConfigMap", "-config")["data"]["hookshield.yaml"]
        path = tmp_path / f"{option}.yaml"
        path.write_text(data)
        result = subprocess.run([sys.executable, "-m", "hookshield", "check-config", str(path)],
                                capture_output=True, text=True, timeout=30)  # fmt: skip
        assert result.returncode == 0, result.stderr


@needs_tool("promtool")
def test_rendered_prometheus_rule_passes_promtool(tmp_path: Path) -> None:
    """The PrometheusRule's groups are the tested rules file, valid for promtool."""
    rule = one(render(OPTIONS["monitoring"]), "PrometheusRule")
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(rule["spec"]["groups"][0]["rules"]) >= 7


def test_monitoring_resources() -> None:
    """ServiceMonitor scrapes the admin port; the dashboard ConfigMap carries the sidecar label."""
    docs = render(OPTIONS["monitoring"])
    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0] == {
        "port": "admin",
        "path": "/metrics",
        "interval": "30s",
    }
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["name"] == "admin"
    dashboard = one(docs, "ConfigMap", "-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert '"uid": "hookshield"' in dashboard["data"]["hookshield.json"]
    assert not [d for d in render() if d["kind"] in ("ServiceMonitor", "PrometheusRule")]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"serviceMonitor": {"enabled": "yes"}}, "serviceMonitor"),
        ({"surprise": 1}, "surprise"),
        ({"ports": {"data": 70000, "admin": 9090}}, "ports"),
        ({"nativeSidecar": "sometimes"}, "nativeSidecar"),
    ],
)
def test_schema_rejects_wrong_values(values: dict[str, Any], message: str) -> None:
    """values.schema.json refuses wrong types and unknown keys, naming them."""
    with pytest.raises(helm.HelmError) as caught:
        render(values)
    assert message in str(caught.value)


@pytest.mark.timeout(60)
async def test_pod_run_starts_and_answers_the_rendered_probes(tmp_path: Path) -> None:
    """hookshield started exactly as the rendered container says (command, args, env, the
    ConfigMap as a mounted directory) answers the rendered probe paths."""
    docs = render()
    container, _ = sidecar(docs)
    mount = tmp_path / "etc-hookshield"
    mount.mkdir()
    (mount / "hookshield.yaml").write_text(
        one(docs, "ConfigMap", "-config")["data"]["hookshield.yaml"]
    )
    ports = {"HOOKSHIELD_LISTEN_PORT": str(free_port()), "HOOKSHIELD_ADMIN_PORT": str(free_port())}
    paths = {"/etc/hookshield": str(mount), "/var/lib/hookshield": str(tmp_path / "queue")}
    env = {e["name"]: _remap(e["value"], paths) for e in container["env"]}
    env.update(ports)  # the pod has its own network namespace; here we need free ports
    args = [_remap(a, paths) for a in container["args"]]
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hookshield", *args, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        admin = f"http://127.0.0.1:{ports['HOOKSHIELD_ADMIN_PORT']}"
        async with aiohttp.ClientSession() as session:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert container[probe]["httpGet"]["port"] == "admin"
                assert await _probe(session, admin + container[probe]["httpGet"]["path"]) == 200
    finally:
        process.terminate()
        output, _ = await process.communicate()
    assert process.returncode == 0, output.decode()


def _remap(value: str, paths: dict[str, str]) -> str:
    for pod_path, local in paths.items():
        value = value.replace(pod_path, local)
    return value


async def _probe(session: aiohttp.ClientSession, url: str) -> int:
    async with asyncio.timeout(15):
        while True:
            try:
                async with session.get(url) as resp:
                    return resp.status
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)


def test_dockerfile_passes_hadolint_and_runs_as_non_root() -> None:
    """hadolint finds nothing at error level; the last USER is not root."""
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    dockerfile = ROOT / "Dockerfile"
    result = subprocess.run(
        [hadolint, "--failure-threshold", "error", str(dockerfile)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    users = re.findall(r"^USER\s+(\S+)", dockerfile.read_text(), re.MULTILINE)
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    text = dockerfile.read_text()
    assert 'ENTRYPOINT ["hookshield"]' in text
    assert 'CMD ["run", "--config", "/etc/hookshield/hookshield.yaml"]' in text
    assert re.search(r"^EXPOSE 8080 9090$", text, re.MULTILINE)
