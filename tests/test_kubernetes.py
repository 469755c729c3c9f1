"""deploy/kubernetes runs `kpsbot run` as SPEC §5 says, and every manifest is valid Kubernetes (offline)."""

import copy
import importlib
import re
from pathlib import Path, PurePosixPath

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = "kustomization.yaml"
SECRET_EXAMPLE = "secret.example.yaml"
APPLIED = {"deployment.yaml", "pvc.yaml", "service.yaml"}

# Kubernetes 1.33: bundled (strict schemas included) by every kubernetes-validate release from
# 1.33.0 up to 1.37.0; older releases lack it, and 1.37.0 no longer has anything before 1.33.
KUBERNETES_VERSION = "1.33"

# Settings a deployment cannot do without (SPEC §2): credentials, projects, Slack, the channel.
NEEDED_SETTINGS = {
    "CLOUD_SDK_AK",
    "CLOUD_SDK_SK",
    "KPS_PROJECTS",
    "SLACK_BOT_TOKEN",
    "SLACK_APP_TOKEN",
    "SLACK_SIGNING_SECRET",
    "KPSBOT_CHANNEL",
}
PLACEHOLDER = re.compile(r"(xoxb-|xapp-)?REPLACE_ME")


def documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc is not None]


def only(name: str, kind: str) -> dict:
    [doc] = [doc for doc in documents(name) if doc.get("kind") == kind]
    return doc


def manifest_files() -> list[str]:
    return sorted(p.name for p in MANIFESTS.glob("*.yaml") if p.name != KUSTOMIZATION)


def validator():
    """kubernetes-validate: a declared test dependency, so its absence fails these tests (not skips)."""
    try:
        return importlib.import_module("kubernetes_validate")
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: pip install -e '.[test]'")


@pytest.fixture(scope="module")
def deployment() -> dict:
    return only("deployment.yaml", "Deployment")


@pytest.fixture(scope="module")
def pod(deployment) -> dict:
    return deployment["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod) -> dict:
    [container] = pod["containers"]
    return container


@pytest.fixture(scope="module")
def http_port(container) -> int:
    [port] = [p["containerPort"] for p in container["ports"] if p["name"] == "http"]
    return port


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", [])}


def quantity(value: str) -> float:
    """A Kubernetes quantity as a number: "100m" -> 0.1, "384Mi" -> 384 * 2**20, "1" -> 1."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
    return float(number) * units.get(unit, 1)


# -- schemas ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", manifest_files())
def test_every_manifest_validates_strictly(name):
    kubernetes_validate = validator()
    docs = documents(name)
    assert docs, f"{name} holds no manifest"
    for doc in docs:
        # strict: a field the schema does not know (a typo, a wrong level) is an error.
        assert kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True) == KUBERNETES_VERSION


def test_strict_validation_rejects_an_unknown_field(deployment):
    kubernetes_validate = validator()
    # Guards the test above: were strict mode not strict, a misplaced field would pass unseen.
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["readOnlyRootFileSystem"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_applies_the_manifests_but_not_the_secret_example():
    kustomization = yaml.safe_load((MANIFESTS / KUSTOMIZATION).read_text())
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    assert set(resources) == APPLIED
    assert all((MANIFESTS / name).is_file() for name in resources)
    assert SECRET_EXAMPLE not in resources
    # A manifest added later must be listed here or named as not applied.
    assert set(manifest_files()) == APPLIED | {SECRET_EXAMPLE}
    # Labels that reach selectors would make a later label change fail on the live Deployment.
    assert "commonLabels" not in kustomization
    assert all(not entry.get("includeSelectors") for entry in kustomization.get("labels", []))


# -- the Deployment --------------------------------------------------------------------------


def test_one_replica_replaced_not_rolled(deployment):
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_runs_kpsbot_run(container):
    assert container["command"] == ["kpsbot", "run"]
    assert not container.get("args")
    assert container["image"]


def test_selector_matches_the_pod_labels(deployment):
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector and selector.items() <= labels.items()
    assert labels["app.kubernetes.io/name"] == "kpsbot"


def test_runs_as_a_non_root_user(pod, container):
    pod_context = pod["securityContext"]
    own = container.get("securityContext", {})
    assert own.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True
    assert own.get("runAsUser", pod_context.get("runAsUser", 0)) > 0
    assert own.get("runAsGroup", pod_context.get("runAsGroup", 0)) > 0
    assert pod_context.get("fsGroup", 0) > 0


def test_container_is_locked_down(pod, container):
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context.get("privileged") in (None, False)
    seccomp = context.get("seccompProfile", pod["securityContext"].get("seccompProfile"))
    assert seccomp == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False


def test_only_the_data_volume_and_tmp_are_writable(pod, container):
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {
        m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"] if not m.get("readOnly")
    }
    assert set(writable) == {"/data", "/tmp"}
    pvc = only("pvc.yaml", "PersistentVolumeClaim")
    assert writable["/data"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert set(writable["/tmp"]) == {"name", "emptyDir"}
    assert quantity(writable["/tmp"]["emptyDir"]["sizeLimit"]) <= 256 * 2**20


def test_database_lives_on_the_data_volume(container):
    db = PurePosixPath(env_of(container)["KPSBOT_DB"])
    # The -wal and -shm files go next to the database, so its directory must be the volume.
    assert db.parent == PurePosixPath("/data")
    assert db.name


def test_settings_come_from_the_secret(container):
    refs = [source["secretRef"]["name"] for source in container["envFrom"] if "secretRef" in source]
    assert refs == [only(SECRET_EXAMPLE, "Secret")["metadata"]["name"]]


def test_port_is_set_so_socket_mode_serves_healthz(container, http_port):
    assert int(env_of(container)["PORT"]) == http_port


@pytest.mark.parametrize("probe", ["livenessProbe", "readinessProbe", "startupProbe"])
def test_probes_check_healthz_on_the_http_port(container, http_port, probe):
    get = container[probe]["httpGet"]
    assert get["path"] == "/healthz"
    port = get["port"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (named.get(port) if isinstance(port, str) else port) == http_port


def test_probe_timing_is_quick_to_route_and_slow_to_kill(container):
    readiness, liveness = container["readinessProbe"], container["livenessProbe"]
    startup = container.get("startupProbe", {})
    assert readiness.get("periodSeconds", 10) <= 10
    # Liveness tolerates a long poll cycle or a slow disk: at least 30 s of failures.
    assert liveness.get("periodSeconds", 10) * liveness.get("failureThreshold", 3) >= 30
    # A slow start (Slack connection, database migration) is not killed either.
    start_budget = liveness.get("initialDelaySeconds", 0) + startup.get("periodSeconds", 10) * startup.get(
        "failureThreshold", 0
    )
    assert start_budget >= 60


def test_grace_period_outlasts_kpsbots_stop_budget(pod):
    # kpsbot stops within 10 s of SIGTERM; Kubernetes' default of 30 s would do, but say it.
    assert pod["terminationGracePeriodSeconds"] > 10


def test_resources_are_requested_and_limited(container):
    resources = container["resources"]
    for name in ("cpu", "memory"):
        request, limit = resources["requests"][name], resources["limits"][name]
        assert 0 < quantity(request) <= quantity(limit)
    # bench/: peak RSS up to about 180 MB at 100,000 tasks; the limit must leave room above it.
    assert quantity(resources["limits"]["memory"]) > 180 * 2**20


def test_prometheus_scrapes_metrics_on_the_http_port(deployment, http_port):
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(http_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_no_service_environment_variables(pod):
    # The Service is named kpsbot: its links would add KPSBOT_SERVICE_HOST, KPSBOT_PORT, ...
    assert pod["enableServiceLinks"] is False


# -- the other manifests ---------------------------------------------------------------------


def test_pvc_is_one_node_read_write(deployment):
    pvc = only("pvc.yaml", "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert quantity(pvc["spec"]["resources"]["requests"]["storage"]) >= 2**30


def test_service_reaches_the_pod_http_port(deployment):
    service = only("service.yaml", "Service")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] and service["spec"]["selector"].items() <= labels.items()
    [port] = service["spec"]["ports"]
    assert port["port"] == 80
    assert port["targetPort"] == "http"


def test_secret_example_names_the_settings_with_placeholders_only():
    secret = only(SECRET_EXAMPLE, "Secret")
    values = secret["stringData"]
    assert NEEDED_SETTINGS <= set(values)
    assert "data" not in secret
    for name, value in values.items():
        assert PLACEHOLDER.fullmatch(str(value)), f"{name} must be a placeholder such as REPLACE_ME"
