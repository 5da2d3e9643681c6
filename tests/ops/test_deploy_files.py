"""Deployment files name the ports, paths, signals and timings the daemon really uses.

One source of truth: include/moe/config/defaults.h (ports, drain timeout, paths), and the setting
table in src/config/settings.cc (TOML keys). Every YAML/TOML file under deploy/, fly.toml and the
Dockerfiles is parsed (no Docker engine is needed) and checked against them; the Dockerfiles must
build with the same scripts the README's first command runs.
"""

import os
import pathlib
import re
import shutil
import subprocess
import tomllib

import pytest
import yaml

ROOT = pathlib.Path(os.environ.get("MOE_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
DEPLOY = ROOT / "deploy"


# ---- The sources of truth -------------------------------------------------------------------


def _defaults():
    text = (ROOT / "include/moe/config/defaults.h").read_text()
    ints = {m[1]: int(m[2]) for m in re.finditer(r"constexpr int (k\w+) = (\d+);", text)}
    strs = {m[1]: m[2] for m in re.finditer(r'constexpr char (k\w+)\[\] = "([^"]*)";', text)}
    return {**ints, **strs}


D = _defaults()
GRPC = D["kDefaultGrpcPort"]
METRICS = D["kDefaultMetricsPort"]
DRAIN = D["kDefaultDrainTimeoutSeconds"]
GRACE = DRAIN + D["kDrainSlackSeconds"]
MODELS = D["kDefaultContainerModelDir"]


def _setting_keys():
    text = (ROOT / "src/config/settings.cc").read_text()
    return set(re.findall(r'\{"([a-z_]+\.[a-z_]+)",\s*"--', text))


def _seconds(value):
    """Durations as Fly/compose/k8s write them: 30, "30", "30s", "1m"."""
    if isinstance(value, int):
        return value
    m = re.fullmatch(r"(\d+)(ms|s|m)?", str(value))
    assert m, f"cannot read duration {value!r}"
    n, unit = int(m[1]), m[2] or "s"
    return {"ms": n / 1000, "s": n, "m": 60 * n}[unit]


def _dockerfile_instructions(path):
    """(INSTRUCTION, argument) pairs with line continuations joined and comments dropped."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            lines.append(current)
            current = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
            for line in lines]


def test_defaults_header_parses():
    assert (GRPC, METRICS) == (50051, 9091)
    assert 0 < DRAIN < GRACE
    assert D["kMetricsPath"] == "/metrics"
    assert D["kReadyzPath"] == "/readyz"
    assert D["kHealthzPath"] == "/healthz"
    assert MODELS == "/models"


# ---- deploy/moe-swarm.toml ------------------------------------------------------------------


def _flatten(table, prefix=""):
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_example_config_uses_real_keys_and_defaults():
    keys = _setting_keys()
    assert len(keys) > 10, "could not read the setting table from src/config/settings.cc"
    config = dict(_flatten(tomllib.loads((DEPLOY / "moe-swarm.toml").read_text())))
    unknown = sorted(set(config) - keys)
    assert not unknown, f"deploy/moe-swarm.toml uses keys the daemon does not know: {unknown}"
    assert config["server.port"] == GRPC
    assert config["server.metrics_port"] == METRICS
    assert config["server.drain_timeout_ms"] == DRAIN * 1000
    assert config["model.cache_dir"].startswith(MODELS + "/")


# ---- Dockerfiles ----------------------------------------------------------------------------


def _readme_build_scripts():
    """Scripts the README's first command (scripts/serve.sh) runs before starting the daemon."""
    readme = (ROOT / "README.md").read_text()
    assert "scripts/serve.sh" in readme
    serve = (ROOT / "scripts/serve.sh").read_text()
    scripts = re.findall(r"^(scripts/[\w-]+\.sh)", serve, re.MULTILINE)
    assert "scripts/install-deps.sh" in scripts and "scripts/build.sh" in scripts, scripts
    return scripts


@pytest.mark.parametrize("name", ["Dockerfile.gpu", "deploy/docker/Dockerfile.cpu"])
def test_dockerfiles(name):
    path = ROOT / name
    ins = _dockerfile_instructions(path)
    runs = " ".join(arg for op, arg in ins if op == "RUN")
    for script in _readme_build_scripts():
        assert f"bash {script}" in runs, f"{name} does not run {script} like the README"
    assert (ROOT / "deploy/docker/collect-runtime.sh").exists()

    expose = {int(p.split("/")[0]) for op, arg in ins if op == "EXPOSE" for p in arg.split()}
    assert expose == {GRPC, METRICS}
    assert ("STOPSIGNAL", "SIGTERM") in ins
    health = [arg for op, arg in ins if op == "HEALTHCHECK"]
    assert len(health) == 1 and f"127.0.0.1:{METRICS}{D['kReadyzPath']}" in health[0]
    volumes = [arg for op, arg in ins if op == "VOLUME"]
    assert volumes and MODELS in volumes[0]
    froms = [arg for op, arg in ins if op == "FROM"]
    assert any(f.startswith("debian:12") for f in froms), froms
    entry = [arg for op, arg in ins if op == "ENTRYPOINT"][-1]
    cmd = [arg for op, arg in ins if op == "CMD"][-1]
    assert '"serve"' in cmd and "/etc/moe-swarm/moe-swarm.toml" in cmd
    users = [arg for op, arg in ins if op == "USER"]
    if name == "Dockerfile.gpu":
        assert any("nvidia/cuda:${CUDA_VERSION}-devel" in f for f in froms)
        assert re.search(r"ARG CUDA_VERSION=13\.0\.\d+", path.read_text())
        assert users and not users[-1].startswith(("0", "root")), "runs as root"
        assert "moe-swarm" in entry
    else:
        # Fly mounts volumes root-owned: the entrypoint drops to uid 10001 itself.
        assert "entrypoint.sh" in entry
        script = (DEPLOY / "docker/entrypoint.sh").read_text()
        assert "setpriv --reuid=moe" in script and "exec " in script


def test_collect_runtime_lists_pinned_packages(tmp_path):
    """deploy/docker/collect-runtime.sh on a dynamically linked Debian program: every library it
    links is owned by a package, listed as name=version (what the runtime stage installs)."""
    if shutil.which("dpkg") is None or shutil.which("ldd") is None:
        pytest.skip("needs dpkg and ldd (Debian)")
    binary = pathlib.Path(os.environ.get("MOE_BINARY_DIR", ROOT / "build")) / "bin/moe-swarm"
    if not binary.exists():
        binary = pathlib.Path(shutil.which("curl") or "/usr/bin/curl")
    result = subprocess.run(["bash", str(DEPLOY / "docker/collect-runtime.sh"), str(binary),
                             str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = (tmp_path / "packages.txt").read_text().split()
    assert lines and all(re.fullmatch(r"[a-z0-9][a-z0-9.+-]*=[\w.:+~-]+", l) for l in lines), lines
    names = {l.split("=")[0] for l in lines}
    assert "libc6" in names
    if binary.name == "moe-swarm":
        assert {"libgrpc++1.51", "libprometheus-cpp-core1.0", "libcivetweb1"} <= names, names
    # Unpackaged libraries: only the CUDA toolkit's (a CUDA build links libcudart, libcublas...).
    unpackaged = [p.name for p in (tmp_path / "lib").iterdir()]
    assert all(name.startswith(("libcu", "libnv")) for name in unpackaged), unpackaged


def test_dockerignore_keeps_build_trees_out():
    ignore = (ROOT / ".dockerignore").read_text().split()
    for entry in ("build*/", ".venv/", ".git/"):
        assert entry in ignore


# ---- fly.toml --------------------------------------------------------------------------------


def test_fly_toml():
    fly = tomllib.loads((ROOT / "fly.toml").read_text())
    assert fly["kill_signal"] == "SIGTERM"
    assert _seconds(fly["kill_timeout"]) == GRACE
    assert (ROOT / fly["build"]["dockerfile"]).exists()
    assert fly["build"]["dockerfile"].endswith("Dockerfile.cpu"), "Fly has no GPUs since 2026-08-01"
    assert all("gpu_kind" not in vm and "gpus" not in vm for vm in fly.get("vm", []))

    (service,) = fly["services"]
    assert service["internal_port"] == GRPC
    (port,) = service["ports"]
    assert port["handlers"] == ["tls", "http"]
    assert port["http_options"]["h2_backend"] is True
    assert "h2" in port["tls_options"]["alpn"]
    assert service["concurrency"]["type"] == "requests"
    assert 0 < service["concurrency"]["soft_limit"] <= service["concurrency"]["hard_limit"]

    checks = [c for c in fly["checks"].values() if c.get("type") == "http"]
    assert any(c["port"] == METRICS and c["path"] == D["kReadyzPath"] for c in checks)
    assert fly["metrics"]["port"] == METRICS and fly["metrics"]["path"] == D["kMetricsPath"]
    mounts = fly["mounts"] if isinstance(fly["mounts"], list) else [fly["mounts"]]
    assert any(m["destination"] == MODELS for m in mounts)
    assert fly["env"]["MOE_CACHE_DIR"].startswith(MODELS + "/")


# ---- Kubernetes ------------------------------------------------------------------------------


def _k8s():
    objects = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                objects[doc["kind"]] = doc
    return objects


def test_kustomization_lists_every_manifest():
    k = yaml.safe_load((DEPLOY / "kubernetes/kustomization.yaml").read_text())
    files = {p.name for p in (DEPLOY / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(k["resources"]) == files


def test_kubernetes_deployment():
    objects = _k8s()
    pod = objects["Deployment"]["spec"]["template"]
    spec = pod["spec"]
    assert spec["terminationGracePeriodSeconds"] == GRACE
    assert spec["securityContext"]["runAsNonRoot"] is True
    (container,) = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": GRPC, "metrics": METRICS}
    assert container["resources"]["limits"]["nvidia.com/gpu"] >= 1

    def probe_target(probe):
        port = probe["httpGet"]["port"]
        return probe["httpGet"]["path"], ports.get(port, port)

    assert probe_target(container["readinessProbe"]) == (D["kReadyzPath"], METRICS)
    assert probe_target(container["livenessProbe"]) == (D["kHealthzPath"], METRICS)
    assert probe_target(container["startupProbe"]) == (D["kHealthzPath"], METRICS)
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/port"] == str(METRICS)
    assert ann["prometheus.io/path"] == D["kMetricsPath"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert MODELS in mounts and "/etc/moe-swarm" in mounts
    assert "/etc/moe-swarm/moe-swarm.toml" in container["args"]


def test_kubernetes_service_and_monitor():
    objects = _k8s()
    svc = {p["name"]: p for p in objects["Service"]["spec"]["ports"]}
    assert svc["grpc"]["port"] == GRPC and svc["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert svc["metrics"]["port"] == METRICS
    (endpoint,) = objects["PodMonitor"]["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] == "metrics" and endpoint["path"] == D["kMetricsPath"]


def test_kubernetes_configmap_is_the_example_config():
    cm = _k8s()["ConfigMap"]
    assert cm["data"]["moe-swarm.toml"] == (DEPLOY / "moe-swarm.toml").read_text()


# ---- docker compose and Prometheus -----------------------------------------------------------


def test_compose():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    daemon = compose["services"]["moe-swarm"]
    assert (DEPLOY / daemon["build"]["context"] / daemon["build"]["dockerfile"]).resolve() == \
        (ROOT / "Dockerfile.gpu").resolve()
    published = {int(p.split(":")[-1]) for p in daemon["ports"]}
    assert published == {GRPC, METRICS}
    assert daemon["stop_signal"] == "SIGTERM"
    assert _seconds(daemon["stop_grace_period"]) == GRACE
    (device,) = daemon["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert any(v.split(":")[1] == MODELS for v in daemon["volumes"])
    prom = compose["services"]["prometheus"]
    assert any(v.startswith("./prometheus/prometheus.yml:") for v in prom["volumes"])


def test_prometheus_scrape_config():
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "moe-swarm"]
    assert job.get("metrics_path", "/metrics") == D["kMetricsPath"]
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    assert targets == [f"moe-swarm:{METRICS}"] and "moe-swarm" in compose["services"]


def test_alert_rules_are_the_same_everywhere():
    alerts = yaml.safe_load((DEPLOY / "prometheus/alerts.yml").read_text())
    operator = _k8s()["PrometheusRule"]
    assert operator["spec"]["groups"] == alerts["groups"]
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    mounts = compose["services"]["prometheus"]["volumes"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    # Every metric an alert uses is one the daemon exports (docs/OPERATIONS.md lists them).
    docs = (ROOT / "docs/OPERATIONS.md").read_text()
    for group in alerts["groups"]:
        for rule in group["rules"]:
            for name in set(re.findall(r"\b(moe_[a-z_]+?)(?:_bucket)?\b", rule["expr"])):
                assert f"`{name}`" in docs, f"{rule['alert']} uses {name}, not in OPERATIONS.md"


def test_promtool_checks_and_unit_tests_the_rules():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    for args in (["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]):
        result = subprocess.run([promtool, *args], cwd=DEPLOY / "prometheus",
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_scrape_config():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    result = subprocess.run([promtool, "check", "config", str(DEPLOY / "prometheus/prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_yaml_and_toml_file_parses():
    files = list(DEPLOY.rglob("*.yaml")) + list(DEPLOY.rglob("*.yml"))
    for path in files:
        list(yaml.safe_load_all(path.read_text()))
    for path in list(DEPLOY.rglob("*.toml")) + [ROOT / "fly.toml"]:
        tomllib.loads(path.read_text())
    assert len(files) >= 7
