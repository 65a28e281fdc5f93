"""The container, the compose stack and the Kubernetes manifests, checked without a Docker
engine or a cluster: files parse, every mounted file exists, every port and LIVECHAIN_*
variable is one the service reads (names derived from the settings model), and the manifests
validate against the Kubernetes API schemas."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.settings import ENV_PREFIX, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
K8S = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"  # the Kubernetes API the manifests are validated against (strict: unknown fields fail)
CREDENTIAL_VARIABLES = {"DHAN_CLIENT_ID", "DHAN_ACCESS_TOKEN"}
LIVECHAIN_SERVICES = ("primary", "replica1", "replica2")


def known_variables() -> set[str]:
    """Every environment variable livechain reads, from the settings model."""
    names = {
        f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
        for section, field in Settings.model_fields.items()
        for key in field.annotation.model_fields  # type: ignore[union-attr]
    }
    return names | CREDENTIAL_VARIABLES | {"LIVECHAIN_CONFIG"}


def _interpolate(value: str) -> str:
    """Compose's ``${NAME:-default}`` with nothing set: the default."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(value))


def _settings_from_env(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in env.items():
        if name.startswith(ENV_PREFIX):
            monkeypatch.setenv(name, value)
    return load_settings()


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _dockerfile_env() -> dict[str, str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"([A-Z_][A-Z0-9_]*)=(\S+)", line))
    return env


def test_dockerfile_is_multi_stage_pinned_non_root_with_a_readiness_healthcheck() -> None:
    """Pinned base, two stages, numeric non-root user, HEALTHCHECK on /readyz of the metrics port."""
    text = DOCKERFILE.read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert base and re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1))
    assert len(re.findall(r"^FROM ", text, re.M)) == 2 and "COPY --from=build" in text
    user = re.search(r"^USER (\d+):(\d+)$", text, re.M)
    assert user and int(user.group(1)) != 0
    defaults = Settings()
    health = re.search(r"^HEALTHCHECK .*\n\s+CMD .*$", text, re.M)
    assert health and "/readyz" in health.group(0) and f"'{defaults.metrics.port}'" in health.group(0)
    exposed = {int(p) for p in re.search(r"^EXPOSE (.+)$", text, re.M).group(1).split()}  # type: ignore[union-attr]
    assert exposed == {defaults.http.port, defaults.metrics.port}
    assert re.search(r'^ENTRYPOINT \["livechain"\]$', text, re.M)
    assert "compileall" in text  # a read-only root filesystem cannot take bytecode later


def test_dockerfile_environment_is_read_by_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each LIVECHAIN_* variable the image sets exists and its value loads."""
    env = {k: v for k, v in _dockerfile_env().items() if k.startswith(ENV_PREFIX)}
    assert env and set(env) <= known_variables(), set(env) - known_variables()
    settings = _settings_from_env(env, monkeypatch)
    assert settings.http.host == settings.metrics.host == "0.0.0.0"
    assert str(settings.instruments.cache_dir) in DOCKERFILE.read_text().split("VOLUME")[1]


def test_compose_services_and_mounts(compose: dict[str, Any]) -> None:
    """The stack has its services, every image is pinned, and every file it mounts exists."""
    services = compose["services"]
    assert set(services) == {"redis", "primary", "replica1", "replica2", "proxy", "prometheus", "grafana"}
    for name, service in services.items():
        if "image" in service and "build" not in service:
            tag = service["image"].rsplit(":", 1)
            assert len(tag) == 2 and tag[1] != "latest" and re.search(r"\d", tag[1]), f"{name}: {service['image']}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts a missing {source}"
    for name in LIVECHAIN_SERVICES:
        s = services[name]
        assert s["build"] == "." and s["read_only"] is True and s["user"] == "10001:10001"
    assert services["primary"]["command"] == ["run"]
    assert services["replica1"]["command"] == services["replica2"]["command"] == ["replica"]
    assert (ROOT / ".dockerignore").is_file()


@pytest.mark.parametrize("name", LIVECHAIN_SERVICES)
def test_compose_environment_and_ports_are_the_services(
    compose: dict[str, Any], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every variable a livechain container gets is read by the service and loads; every port is its port."""
    service = compose["services"][name]
    env = {k: _interpolate(v) for k, v in service.get("environment", {}).items()}
    assert set(env) <= known_variables(), set(env) - known_variables()
    settings = _settings_from_env({**_dockerfile_env(), **env}, monkeypatch)
    ports = {int(p.rsplit(":", 1)[1]) for p in service.get("ports", [])}
    assert ports <= {settings.http.port, settings.metrics.port}
    if name == "primary":
        mount = next(v for v in service["volumes"] if not v.startswith("."))
        assert mount.split(":")[1] == str(settings.instruments.cache_dir)
        assert settings.redis.enabled is True
    redis_host = re.match(r"redis://([^:/]+):(\d+)", settings.redis.url.get_secret_value())
    assert redis_host and redis_host.group(1) in compose["services"] and redis_host.group(2) == "6379"


def test_proxy_balances_options_across_the_replicas(compose: dict[str, Any]) -> None:
    """nginx sends /options/ to both replicas at their HTTP port and listens where compose publishes."""
    conf = (ROOT / "config" / "nginx.conf").read_text()
    http_port = Settings().http.port
    upstream = re.search(r"upstream livechain_replicas \{(.*?)\}", conf, re.S).group(1)  # type: ignore[union-attr]
    servers = {s.split()[0] for s in re.findall(r"server ([^;]+);", upstream)}
    assert servers == {f"replica1:{http_port}", f"replica2:{http_port}"}
    assert re.search(r"location /options/ \{\s*proxy_pass http://livechain_replicas;", conf)
    listen = int(re.search(r"listen (\d+);", conf).group(1))  # type: ignore[union-attr]
    published = {int(p.rsplit(":", 1)[1]) for p in compose["services"]["proxy"]["ports"]}
    assert published == {listen}


def test_prometheus_scrapes_every_livechain_process(compose: dict[str, Any]) -> None:
    """Prometheus's targets are the three livechain services at their metrics port; its rules are mounted."""
    conf = yaml.safe_load((ROOT / "config" / "prometheus.yml").read_text())
    targets = {t for job in conf["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:{Settings().metrics.port}" for name in LIVECHAIN_SERVICES}
    mounts = {v.split(":")[1]: v.split(":")[0] for v in compose["services"]["prometheus"]["volumes"]}
    for rule_file in conf["rule_files"]:
        assert mounts[f"/etc/prometheus/{rule_file}"] == f"./config/{rule_file}"


def test_grafana_gets_the_dashboard_and_the_prometheus_data_source(compose: dict[str, Any]) -> None:
    """The provisioned data source points at the compose Prometheus; the dashboard is where the provider looks."""
    grafana = compose["services"]["grafana"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    prometheus_port = compose["services"]["prometheus"]["ports"][0].rsplit(":", 1)[1]
    assert source["type"] == "prometheus" and source["url"] == f"http://prometheus:{prometheus_port}"
    provider = yaml.safe_load((provisioning / "dashboards" / "livechain.yml").read_text())["providers"][0]
    dashboard = next(c for c, h in mounts.items() if h == "./config/grafana-livechain.json")
    assert Path(dashboard).parent == Path(provider["options"]["path"])


# --------------------------------------------------------------------------- Kubernetes


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        out += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return out


def test_kubernetes_manifests_validate_against_the_api_schemas() -> None:
    """Every manifest is a valid object of its kind (strict: an unknown field fails)."""
    docs = _manifests()
    assert {d["kind"] for _, d in docs} >= {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "Secret"}
    for name, doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert all((K8S / r).is_file() for r in kustomization["resources"])


def test_kubernetes_validation_catches_a_mistake() -> None:
    """The validator is not a no-op: a misspelled probe field is refused."""
    deployment = next(d for _, d in _manifests() if d["kind"] == "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {"path": "/readyz"}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def _by(kind: str, name: str) -> dict[str, Any]:
    return next(d for _, d in _manifests() if d["kind"] == kind and d["metadata"]["name"] == name)


def _k8s_settings(tmp_path: Path) -> Settings:
    config = _by("ConfigMap", "livechain-config")["data"]["livechain.toml"]
    path = tmp_path / "livechain.toml"
    path.write_text(config)
    tomllib.loads(config)
    return load_settings(path)


def test_kubernetes_primary_replicas_probes_and_config(tmp_path: Path) -> None:
    """One Recreate primary, autoscaled replicas, probes on the metrics port, config and secret wired."""
    settings = _k8s_settings(tmp_path)
    primary = _by("Deployment", "livechain-primary")
    assert primary["spec"]["replicas"] == 1 and primary["spec"]["strategy"]["type"] == "Recreate"
    replica = _by("Deployment", "livechain-replica")
    hpa = _by("HorizontalPodAutoscaler", "livechain-replica")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "livechain-replica" and hpa["spec"]["minReplicas"] >= 2
    for deployment, command in ((primary, "run"), (replica, "replica")):
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        assert container["args"] == [command]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"http": settings.http.port, "metrics": settings.metrics.port}
        probes = {k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
        assert {k: (p["path"], p["port"]) for k, p in probes.items()} == {
            "startupProbe": ("/healthz", "metrics"), "livenessProbe": ("/healthz", "metrics"),
            "readinessProbe": ("/readyz", "metrics"),
        }
        assert container["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"]
        env = {e["name"] for e in container["env"]}
        assert env <= known_variables()
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert str(Path(next(e["value"] for e in container["env"] if e["name"] == "LIVECHAIN_CONFIG")).parent) in mounts
        assert "cpu" in container["resources"]["requests"]  # the autoscaler's utilisation needs it
    # The token file the settings name is where the Secret is mounted.
    container = primary["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert settings.feed.token_file is not None
    assert str(settings.feed.token_file.parent) == mounts["dhan-token"]
    assert str(settings.instruments.cache_dir) == mounts["scrip-cache"]
    redis_service = _by("Service", "livechain-redis")
    assert settings.redis.url.get_secret_value() == f"redis://livechain-redis:{redis_service['spec']['ports'][0]['port']}/0"
    for service_name, component in (("livechain-primary", "primary"), ("livechain", "replica")):
        service = _by("Service", service_name)
        assert service["spec"]["selector"]["app.kubernetes.io/component"] == component
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= {"http", "metrics"}
