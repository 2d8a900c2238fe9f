"""Offline checks of deploy/: the manifests are valid, build, and keep the guard rails.

Nothing here needs a cluster. It needs `kubectl` (for `kubectl kustomize`) and a
virtualenv with pytest, pyyaml and kubernetes-validate:

    .venv/bin/python -m pytest deploy/tests -q          # or: just test-deploy

What is checked, and why (issue 5; the original design got several of these wrong):

* every manifest passes `kubernetes-validate --strict` for KUBERNETES_VERSION, and
  every kustomization builds; every manifest file is reachable from a
  kustomization (nothing silently left out); `kubectl apply -f deploy/jobs` sees
  only complete objects;
* every pod template: pinned to the analytics node (nodeSelector + toleration),
  Pod Security `restricted` context, no API token, requests and limits inside the
  LimitRange of its namespace, and the sum of all pods that can run at the same
  time inside the namespace's ResourceQuota;
* every namespace: Pod Security labels, a default-deny policy, DNS to kube-dns
  selected by `kubernetes.io/metadata.name`, S3 by ipBlock, PostgreSQL by
  namespace AND pod selector; no "block" policies (NetworkPolicies only allow);
* no Secret carrying data in anything applied; secret templates hold placeholders;
* every environment variable a container gets is one the binaries read, and the
  required ones are all there;
* monitoring (deploy/monitoring, deploy/overlays/monitoring): the alert rules
  pass `promtool check rules` and their unit tests (`promtool test rules`), the
  PrometheusRule holds exactly the rule file's groups, and with the overlay every
  scheduled pod pushes to the Pushgateway through an egress policy that selects it.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
import shutil
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

# The Kubernetes version the manifests are validated against; docs/deploy.md and
# the namespaces' pod-security.kubernetes.io/*-version labels state the same one.
KUBERNETES_VERSION = "1.31.0"

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SECRET_TEMPLATES = DEPLOY / "base" / "secrets"
MONITORING = DEPLOY / "monitoring"
MONITORING_RULES = MONITORING / "rules"
MONITORING_OVERLAY = DEPLOY / "overlays" / "monitoring"
PUSHGATEWAY_PORT = 9091
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# `kubectl apply -f <dir>` reads only files with these extensions.
KUBECTL_EXTENSIONS = (".yaml", ".yml", ".json")

# Environment variables the binaries read: SPEC §8 plus the jobs' tuning knobs.
# Kept as a constant for now; test_allowed_env_matches_the_readme checks it
# against the configuration table in README.md, which is meant to become the
# single source.
ALLOWED_ENV = frozenset(
    {
        "LAKE_BUSY_OK",
        "DJANGO_DB_HOST",
        "DJANGO_DB_PORT",
        "DJANGO_DB_NAME",
        "DJANGO_DB_USER",
        "DJANGO_DB_PASSWORD",
        "DJANGO_DB_SSLMODE",
        "DJANGO_DB_SSLROOTCERT",
        "DJANGO_DB_STATEMENT_TIMEOUT",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT",
        "AWS_REGION",
        "S3_BUCKET",
        "LAKE_URL",
        "S3_CONDITIONAL_WRITES",
        "S3_MAX_RETRIES",
        "S3_TIMEOUT_SECS",
        "LOG_FORMAT",
        "RUST_LOG",
        "BRONZE_LEASE_SECS",
        "BRONZE_LOOKBACK",
        "BRONZE_HORIZON_WARN",
        "SILVER_MAX_VIOLATION_RATIO",
        "SILVER_SHARD_COUNT",
        "SILVER_MEMORY_MB",
        "JOB_COMPLETION_INDEX",
        "PUSHGATEWAY_URL",
        "MAINTAIN_GRACE",
        "MAINTAIN_UPLOAD_GRACE",
        "MAINTAIN_BRONZE_RETENTION_DAYS",
        "MAINTAIN_SILVER_RETENTION_DAYS",
        "MAINTAIN_OUTBOX_RETENTION_DAYS",
        "MAINTAIN_REPORTS_RETENTION_DAYS",
    }
)
REQUIRED_ENV = frozenset({"DJANGO_DB_HOST", "DJANGO_DB_NAME", "DJANGO_DB_USER", "DJANGO_DB_PASSWORD"})
# One of these names the lake root.
LAKE_ROOT_ENV = frozenset({"S3_BUCKET", "LAKE_URL"})
# Keys whose template value must be a placeholder, never a plausible secret.
SECRET_KEY_PATTERN = re.compile(r"PASSWORD|SECRET|ACCESS_KEY")
PLACEHOLDER = "REPLACE_ME"

# The image is pinned by a release tag or a digest, never `latest` or a branch;
# the registry is a placeholder that operators replace (docs/deploy.md, "Image").
IMAGE_PATTERN = re.compile(r"^[a-z0-9.:/_-]+/deep-storage(:\d+\.\d+\.\d+|@sha256:[0-9a-f]{64})$")
BINARIES = {
    "/usr/local/bin/bronze-ingest",
    "/usr/local/bin/silver-transform",
    "/usr/local/bin/smoke-test",
    "/usr/local/bin/lake-maintain",
    "/usr/local/bin/lake",
}
# Binaries that read only the lake: no database settings.
LAKE_ONLY = (["/usr/local/bin/lake"], ["/usr/local/bin/lake-maintain"])
RUN_AS = 65532
NODE_POOL = ("robson.io/pool", "analytics")
TAINT = {"key": "robson.io/dedicated", "value": "analytics", "effect": "NoSchedule"}
LAKE_POD_LABEL = ("app.kubernetes.io/part-of", "robson-deep-storage")
PSS_MODES = ("enforce", "audit", "warn")
POD_KINDS = {"Pod", "Job", "CronJob", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}
RBAC_KINDS = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}


# --------------------------------------------------------------------------- helpers


def load_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d]


def manifest_files() -> list[Path]:
    """Every Kubernetes manifest under deploy/ (secret templates included; not
    the Prometheus rule files of deploy/monitoring/rules)."""
    files = []
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.suffix in (".yaml", ".yml") and path.name not in KUSTOMIZATION_NAMES:
            parts = path.relative_to(DEPLOY).parts
            if "tests" not in parts and path.parent != MONITORING_RULES:
                files.append(path)
    return files


def kustomization_dirs() -> list[Path]:
    return sorted({p.parent for name in KUSTOMIZATION_NAMES for p in DEPLOY.rglob(name)})


def kustomization_file(directory: Path) -> Path:
    for name in KUSTOMIZATION_NAMES:
        if (directory / name).is_file():
            return directory / name
    raise AssertionError(f"no kustomization in {directory}")


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl not found: it renders the kustomizations (`kubectl kustomize`); install it")
    return path


@functools.lru_cache(maxsize=None)
def kustomize_build(directory: Path) -> tuple[str, list[dict]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"kubectl kustomize {rel(directory)} failed:\n{result.stderr}")
    return result.stdout, [d for d in yaml.safe_load_all(result.stdout) if d]


@functools.lru_cache(maxsize=None)
def applied_objects() -> tuple[dict, ...]:
    """Everything that can reach a cluster: deploy/ and deploy/jobs, rendered, de-duplicated."""
    seen: dict[tuple, dict] = {}
    for directory in (DEPLOY, DEPLOY / "jobs"):
        for obj in kustomize_build(directory)[1]:
            meta = obj["metadata"]
            seen[(obj["kind"], meta.get("namespace"), meta["name"])] = obj
    # `kubectl apply -f deploy/jobs` too, in case a file there is not in its kustomization.
    for path in sorted((DEPLOY / "jobs").iterdir()):
        if path.suffix in KUBECTL_EXTENSIONS:
            for obj in load_docs(path):
                if obj.get("kind") == "Kustomization":
                    continue  # test_kubectl_apply_f_jobs_sees_only_complete_objects reports it
                meta = obj["metadata"]
                seen[(obj["kind"], meta.get("namespace"), meta["name"])] = obj
    return tuple(seen.values())


def objects(kind: str) -> list[dict]:
    return [o for o in applied_objects() if o["kind"] == kind]


def obj_id(obj: dict) -> str:
    return f"{obj['kind']}/{obj['metadata'].get('namespace', '-')}/{obj['metadata']['name']}"


def pod_template(obj: dict) -> dict:
    if obj["kind"] == "Pod":
        return obj
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]
    return obj["spec"]["template"]


def workloads() -> list[dict]:
    return [o for o in applied_objects() if o["kind"] in POD_KINDS]


def containers(pod_spec: dict) -> list[dict]:
    return pod_spec.get("initContainers", []) + pod_spec["containers"]


def max_concurrent_pods(obj: dict) -> int:
    """How many pods of this workload can run at the same time."""
    kind = obj["kind"]
    if kind == "Pod":
        return 1
    if kind == "Job":
        return obj["spec"].get("parallelism", 1)
    if kind == "CronJob":
        policy = obj["spec"].get("concurrencyPolicy", "Allow")
        assert policy in ("Forbid", "Replace"), f"{obj_id(obj)}: concurrencyPolicy {policy} is unbounded"
        return obj["spec"]["jobTemplate"]["spec"].get("parallelism", 1)
    return obj["spec"].get("replicas", 1)


_SUFFIXES = {
    "m": Fraction(1, 1000),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "Ki": Fraction(2**10),
    "Mi": Fraction(2**20),
    "Gi": Fraction(2**30),
    "Ti": Fraction(2**40),
}


def quantity(value) -> Fraction:
    """A Kubernetes resource quantity ("250m", "1", "256Mi", "1Gi") as an exact number."""
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match, f"not a quantity: {value!r}"
    number, suffix = match.groups()
    assert suffix in ("",) + tuple(_SUFFIXES), f"unknown quantity suffix in {value!r}"
    return Fraction(number) * _SUFFIXES.get(suffix, Fraction(1))


def secret_template(name: str) -> dict:
    for path in SECRET_TEMPLATES.glob("*.template.yaml"):
        for doc in load_docs(path):
            if doc["kind"] == "Secret" and doc["metadata"]["name"] == name:
                return doc
    raise AssertionError(f"no template for Secret {name} in {rel(SECRET_TEMPLATES)}")


def container_env_names(container: dict) -> dict[str, str]:
    """Every variable name the container gets, mapped to where it comes from."""
    names: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" not in source, "envFrom configMapRef: its keys cannot be checked here"
        assert not source.get("prefix"), "envFrom prefix renames keys; use the plain names"
        secret = source["secretRef"]["name"]
        for key in secret_template(secret)["stringData"]:
            names[key] = f"Secret {secret} (envFrom)"
    for var in container.get("env", []):
        names[var["name"]] = "env"
    return names


# --------------------------------------------------------------------------- validity


@pytest.mark.parametrize("path", manifest_files(), ids=rel)
def test_manifest_validates_strict(path: Path) -> None:
    tool = Path(sys.executable).parent / "kubernetes-validate"
    assert tool.exists(), f"{tool} missing: pip install kubernetes-validate into the virtualenv"
    result = subprocess.run(
        [str(tool), "--strict", "--kubernetes-version", KUBERNETES_VERSION, "--quiet", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("directory", kustomization_dirs(), ids=rel)
def test_kustomization_builds_and_validates(directory: Path, tmp_path: Path) -> None:
    spec = yaml.safe_load(kustomization_file(directory).read_text())
    if spec["kind"] == "Component" and not spec.get("resources"):
        # Only transforms (deploy/components/image): it must be used somewhere.
        users = [d for d in kustomization_dirs() if directory.resolve() in {
            (d / c).resolve() for c in yaml.safe_load(kustomization_file(d).read_text()).get("components", [])
        }]
        assert users, f"{rel(directory)} is a component no kustomization uses"
        return
    rendered, docs = kustomize_build(directory)
    assert docs, f"{rel(directory)} renders nothing"
    # Validate the rendered objects as well: patches added later are covered too.
    out = tmp_path / "rendered.yaml"
    out.write_text(rendered)
    tool = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run(
        [str(tool), "--strict", "--kubernetes-version", KUBERNETES_VERSION, "--quiet", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_manifest_is_in_a_kustomization_except_templates() -> None:
    listed: set[Path] = set()
    for directory in kustomization_dirs():
        for entry in yaml.safe_load(kustomization_file(directory).read_text()).get("resources", []):
            listed.add((directory / entry).resolve())
    for path in manifest_files():
        if path.name.endswith(".template.yaml"):
            assert path.resolve() not in listed, f"{rel(path)} is a template and must never be applied"
        else:
            assert path.resolve() in listed, f"{rel(path)} is in no kustomization, so it is never deployed"


def test_kubectl_apply_f_jobs_sees_only_complete_objects() -> None:
    files = [p for p in (DEPLOY / "jobs").iterdir() if p.suffix in KUBECTL_EXTENSIONS]
    assert {p.name for p in files} >= {"bronze-ingest.yaml", "silver-transform.yaml", "smoke-test.yaml"}
    for path in files:
        for doc in load_docs(path):
            assert doc.get("apiVersion") and doc.get("kind"), f"{rel(path)}: not a Kubernetes object"
            assert doc["kind"] != "Kustomization", f"{rel(path)}: kubectl apply -f would choke on it"
            assert doc["metadata"].get("namespace") == "analytics-jobs", f"{rel(path)}: namespace"


# --------------------------------------------------------------------------- pods


def test_one_image_for_every_pod() -> None:
    images = {c["image"] for w in workloads() for c in containers(pod_template(w)["spec"])}
    assert len(images) == 1, f"every pod runs the same image (one release): {sorted(images)}"


def test_there_are_pod_templates_for_every_binary() -> None:
    commands = {pod_template(w)["spec"]["containers"][0]["command"][0] for w in workloads()}
    assert commands == BINARIES
    kinds = {(w["kind"], w["metadata"]["name"]) for w in workloads()}
    assert ("CronJob", "bronze-ingest") in kinds and ("CronJob", "silver-transform") in kinds


@pytest.mark.parametrize("obj", workloads(), ids=obj_id)
def test_pod_is_pinned_to_the_analytics_node(obj: dict) -> None:
    spec = pod_template(obj)["spec"]
    key, value = NODE_POOL
    assert spec.get("nodeSelector", {}).get(key) == value
    tolerations = spec.get("tolerations", [])
    assert any(
        t.get("key") == TAINT["key"]
        and t.get("effect") == TAINT["effect"]
        and (t.get("operator") == "Exists" or t.get("value") == TAINT["value"])
        for t in tolerations
    ), f"no toleration for {TAINT}"


@pytest.mark.parametrize("obj", workloads(), ids=obj_id)
def test_pod_security_context_is_restricted(obj: dict) -> None:
    spec = pod_template(obj)["spec"]
    pod_sc = spec.get("securityContext", {})
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    for c in containers(spec):
        sc = c.get("securityContext", {})
        effective = {**pod_sc, **sc}
        where = f"container {c['name']}"
        assert effective.get("runAsNonRoot") is True, where
        assert effective.get("runAsUser") == RUN_AS and effective.get("runAsGroup") == RUN_AS, where
        assert effective.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert sc.get("allowPrivilegeEscalation") is False, where
        assert sc.get("privileged") is not True, where
        assert sc.get("readOnlyRootFilesystem") is True, where
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
        assert not sc.get("capabilities", {}).get("add"), where
    # Pod Security restricted allows only these volume types; hostPath never.
    allowed = {"emptyDir", "secret", "configMap", "projected", "downwardAPI", "persistentVolumeClaim", "ephemeral", "csi"}
    for volume in spec.get("volumes", []):
        assert set(volume) - {"name"} <= allowed, f"volume {volume['name']}"


@pytest.mark.parametrize("obj", workloads(), ids=obj_id)
def test_pod_has_scratch_tmp_and_no_api_token(obj: dict) -> None:
    spec = pod_template(obj)["spec"]
    empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
    for c in spec["containers"]:
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        assert tmp and tmp[0]["name"] in empty_dirs, f"container {c['name']}: /tmp must be an emptyDir"
    for v in spec.get("volumes", []):
        if "emptyDir" in v:
            assert "sizeLimit" in v["emptyDir"], f"emptyDir {v['name']} without sizeLimit"
    assert spec.get("serviceAccountName") == "lake-jobs"
    assert spec.get("automountServiceAccountToken") is False
    assert spec.get("enableServiceLinks") is False, "service links inject env names the binaries do not read"
    assert spec.get("restartPolicy") in ("Never", "OnFailure")


@pytest.mark.parametrize("obj", workloads(), ids=obj_id)
def test_pod_runs_the_project_image_and_a_known_binary(obj: dict) -> None:
    template = pod_template(obj)
    for c in template["spec"]["containers"]:
        assert IMAGE_PATTERN.match(c["image"]), f"{c['image']}: pin <registry>/deep-storage:<x.y.z>"
        assert c.get("command", [None])[0] in BINARIES, c.get("command")
    # The NetworkPolicies for PostgreSQL and S3 select pods by this label.
    key, value = LAKE_POD_LABEL
    assert template["metadata"]["labels"].get(key) == value


LAKE_JOBS = ("bronze-ingest", "silver-transform")


@pytest.mark.parametrize(
    "obj",
    [w for w in workloads() if w["kind"] in ("Job", "CronJob") and w["metadata"]["name"] in LAKE_JOBS],
    ids=obj_id,
)
def test_exit_4_is_retried_and_only_2_and_3_fail_the_job(obj: dict) -> None:
    """Exit 4 (another run holds the batch) must never be FailJob: the commit
    protocol releases a failed run's lease, so a retry resumes; only bad
    configuration (2) and a quality breach (3) end the Job at once."""
    job_spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    fail_codes = set()
    for rule in job_spec["podFailurePolicy"]["rules"]:
        codes = rule.get("onExitCodes")
        # FailIndex (an Indexed Job's shard) ends that shard without retry.
        if codes and rule["action"] in ("FailJob", "FailIndex"):
            assert codes["operator"] == "In"
            assert rule["action"] == "FailJob" or "backoffLimitPerIndex" in job_spec, "FailIndex needs it"
            fail_codes |= set(codes["values"])
    assert fail_codes == {2, 3}, fail_codes
    assert job_spec["backoffLimit"] >= 3, "room for retries of exit 1 and 4"


def container_env(obj: dict) -> dict:
    job_spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    (container,) = job_spec["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_a_schedule_overlapping_a_long_run_succeeds_and_a_manual_run_says_busy() -> None:
    """A scheduled export or silver run that finds a manual backfill or full
    refresh holding its work exits 0 (LAKE_BUSY_OK): retries with back-off
    would spend the backoffLimit within minutes and fail the Job (an alert)
    while the other run is fine. A manual Job keeps exit 4, retried: the person
    who started it learns it has not run yet."""
    lake = [
        w
        for w in workloads()
        if w["kind"] in ("Job", "CronJob")
        and w["metadata"]["labels"].get("app.kubernetes.io/name") in LAKE_JOBS
        and w["metadata"]["labels"].get("app.kubernetes.io/component") != "bronze-verify"
    ]
    assert {(w["kind"], w["metadata"]["labels"]["app.kubernetes.io/name"]) for w in lake} == {
        (kind, name) for kind in ("Job", "CronJob") for name in LAKE_JOBS
    }
    for w in lake:
        expected = "true" if w["kind"] == "CronJob" else None
        assert container_env(w).get("LAKE_BUSY_OK") == expected, obj_id(w)


@pytest.mark.parametrize(
    "obj",
    [w for w in workloads() if w["metadata"]["labels"].get("app.kubernetes.io/name") == "silver-transform"],
    ids=obj_id,
)
def test_silver_is_an_indexed_job_with_one_shard_per_completion(obj: dict) -> None:
    job_spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    assert job_spec.get("completionMode") == "Indexed", "silver shards run as an Indexed Job"
    assert isinstance(job_spec.get("backoffLimitPerIndex"), int), "retries per shard"
    (container,) = pod_template(obj)["spec"]["containers"]
    env = {v["name"]: v.get("value") for v in container.get("env", [])}
    assert env.get("SILVER_SHARD_COUNT") == str(job_spec["completions"]), (
        f"SILVER_SHARD_COUNT {env.get('SILVER_SHARD_COUNT')} must equal completions {job_spec['completions']}"
    )
    assert "JOB_COMPLETION_INDEX" not in env, "Kubernetes sets JOB_COMPLETION_INDEX itself"


def test_every_silver_workload_has_the_same_shard_count() -> None:
    counts = set()
    for w in workloads():
        if w["metadata"]["labels"].get("app.kubernetes.io/name") == "silver-transform":
            (container,) = pod_template(w)["spec"]["containers"]
            counts |= {v.get("value") for v in container.get("env", []) if v["name"] == "SILVER_SHARD_COUNT"}
    assert len(counts) == 1, f"the CronJob and the manual Job disagree on SILVER_SHARD_COUNT: {counts}"


@pytest.mark.parametrize("obj", [w for w in workloads() if w["kind"] in ("Job", "CronJob")], ids=obj_id)
def test_job_limits_its_runtime_and_cleans_up(obj: dict) -> None:
    job_spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
    for field in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        assert isinstance(job_spec.get(field), int), f"{field} missing"
    if obj["kind"] == "CronJob":
        spec = obj["spec"]
        assert spec.get("concurrencyPolicy") == "Forbid"
        assert isinstance(spec.get("startingDeadlineSeconds"), int)
        minute, hour, *_ = spec["schedule"].split()
        period = 3600 if hour == "*" else 86400
        # With Forbid, a hung run would block every following run.
        assert job_spec["activeDeadlineSeconds"] < period, "activeDeadlineSeconds must end a run before the next"


def test_schedules_bronze_hourly_silver_daily() -> None:
    schedules = {c["metadata"]["name"]: c["spec"]["schedule"].split() for c in objects("CronJob")}
    minute, hour, dom, month, dow = schedules["bronze-ingest"]
    assert minute.isdigit() and (hour, dom, month, dow) == ("*", "*", "*", "*")
    minute, hour, dom, month, dow = schedules["silver-transform"]
    assert minute.isdigit() and hour.isdigit() and (dom, month, dow) == ("*", "*", "*")
    minute, hour, dom, month, dow = schedules["bronze-verify"]
    assert minute.isdigit() and hour.isdigit() and (dom, month, dow) == ("*", "*", "*")


def test_a_daily_verify_audits_a_window_that_does_not_grow_with_the_lake() -> None:
    (verify,) = [c for c in objects("CronJob") if c["metadata"]["name"] == "bronze-verify"]
    (container,) = pod_template(verify)["spec"]["containers"]
    args = container.get("args", [])
    assert args[:1] == ["--verify"] and "--last-days" in args, args
    assert 1 <= int(args[args.index("--last-days") + 1]) <= 31, args


# --------------------------------------------------------------------------- resources


def limit_range(namespace: str) -> dict:
    ranges = [o for o in objects("LimitRange") if o["metadata"]["namespace"] == namespace]
    assert len(ranges) == 1, f"namespace {namespace}: expected one LimitRange, found {len(ranges)}"
    return next(lim for lim in ranges[0]["spec"]["limits"] if lim["type"] == "Container")


@pytest.mark.parametrize("obj", workloads(), ids=obj_id)
def test_requests_and_limits_inside_the_limit_range(obj: dict) -> None:
    bounds = limit_range(obj["metadata"]["namespace"])
    for c in containers(pod_template(obj)["spec"]):
        res = c.get("resources", {})
        for resource in ("cpu", "memory"):
            where = f"container {c['name']} {resource}"
            assert resource in res.get("requests", {}), f"{where}: no request"
            assert resource in res.get("limits", {}), f"{where}: no limit"
            request = quantity(res["requests"][resource])
            limit = quantity(res["limits"][resource])
            assert request <= limit, where
            if resource in bounds.get("min", {}):
                assert request >= quantity(bounds["min"][resource]), f"{where}: below the LimitRange min"
            if resource in bounds.get("max", {}):
                assert limit <= quantity(bounds["max"][resource]), f"{where}: above the LimitRange max"
            if resource in bounds.get("maxLimitRequestRatio", {}):
                ratio = quantity(bounds["maxLimitRequestRatio"][resource])
                assert limit <= request * ratio, f"{where}: limit/request above the LimitRange ratio"


def test_limit_range_defaults_are_inside_its_own_bounds() -> None:
    for lr in objects("LimitRange"):
        for lim in lr["spec"]["limits"]:
            for resource in ("cpu", "memory"):
                low = quantity(lim["min"][resource])
                high = quantity(lim["max"][resource])
                request = quantity(lim["defaultRequest"][resource])
                limit = quantity(lim["default"][resource])
                assert low <= request <= limit <= high, f"{obj_id(lr)} {resource}"
                ratio = lim.get("maxLimitRequestRatio", {}).get(resource)
                if ratio is not None:
                    assert limit <= request * quantity(ratio), f"{obj_id(lr)} {resource} ratio"


def test_all_concurrently_possible_pods_fit_the_resource_quota() -> None:
    namespaces = {o["metadata"]["name"] for o in objects("Namespace")}
    for namespace in namespaces:
        quotas = [q for q in objects("ResourceQuota") if q["metadata"]["namespace"] == namespace]
        assert len(quotas) == 1, f"namespace {namespace}: expected one ResourceQuota"
        hard = quotas[0]["spec"]["hard"]
        totals = {"pods": Fraction(0)}
        for obj in (w for w in workloads() if w["metadata"]["namespace"] == namespace):
            pods = max_concurrent_pods(obj)
            totals["pods"] += pods
            spec = pod_template(obj)["spec"]
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    # What the quota charges a pod: its containers' sum, or its
                    # largest init container if that is more.
                    def amount(c: dict) -> Fraction:
                        return quantity(c["resources"][kind][resource])

                    per_pod = max(
                        [sum((amount(c) for c in spec["containers"]), Fraction(0))]
                        + [amount(c) for c in spec.get("initContainers", [])]
                    )
                    key = f"{kind}.{resource}"
                    totals[key] = totals.get(key, Fraction(0)) + pods * per_pod
        for key in ("pods", "requests.cpu", "limits.cpu", "requests.memory", "limits.memory"):
            assert key in hard, f"ResourceQuota of {namespace} does not bound {key}"
            total = totals.get(key, Fraction(0))
            shown = f"{float(total) / 2**20:g}Mi" if key.endswith("memory") else f"{float(total):g}"
            assert total <= quantity(hard[key]), (
                f"{namespace}: {key} of all concurrent pods is {shown}, quota {hard[key]}"
            )


# --------------------------------------------------------------------------- namespaces and policies


def lake_namespaces() -> list[str]:
    return sorted({o["metadata"]["name"] for o in objects("Namespace")})


def test_namespaces_exist_for_everything_and_enforce_restricted() -> None:
    assert set(lake_namespaces()) == {"analytics-jobs", "datalake-system"}
    for ns in objects("Namespace"):
        labels = ns["metadata"]["labels"]
        for mode in PSS_MODES:
            assert labels.get(f"pod-security.kubernetes.io/{mode}") == "restricted", mode
            major_minor = ".".join(KUBERNETES_VERSION.split(".")[:2])
            assert labels.get(f"pod-security.kubernetes.io/{mode}-version") in ("latest", f"v{major_minor}")
    used = {o["metadata"].get("namespace") for o in applied_objects() if o["kind"] != "Namespace"}
    assert used <= set(lake_namespaces()), f"objects in namespaces this deployment does not create: {used}"


def policies(namespace: str) -> list[dict]:
    return [p for p in objects("NetworkPolicy") if p["metadata"]["namespace"] == namespace]


def is_default_deny(policy: dict) -> bool:
    spec = policy["spec"]
    return (
        spec.get("podSelector") == {}
        and set(spec.get("policyTypes", [])) == {"Ingress", "Egress"}
        and not spec.get("ingress")
        and not spec.get("egress")
    )


@pytest.mark.parametrize("namespace", lake_namespaces())
def test_default_deny_in_every_namespace(namespace: str) -> None:
    assert any(is_default_deny(p) for p in policies(namespace)), f"no default-deny policy in {namespace}"


def test_policies_only_allow() -> None:
    """A policy without rules denies; only the default-deny may be one. No "block" policies."""
    for policy in objects("NetworkPolicy"):
        if is_default_deny(policy):
            continue
        spec = policy["spec"]
        assert spec.get("ingress") or spec.get("egress"), f"{obj_id(policy)} allows nothing (a 'block' policy?)"
        assert "Ingress" not in spec.get("policyTypes", []) or spec.get("ingress"), obj_id(policy)


def egress_rules(namespace: str, port: int) -> list[tuple[dict, dict]]:
    """(policy, rule) pairs of the namespace's egress rules that open `port`."""
    found = []
    for policy in policies(namespace):
        for rule in policy["spec"].get("egress", []):
            if any(p.get("port") == port for p in rule.get("ports", [])):
                found.append((policy, rule))
    return found


@pytest.mark.parametrize("namespace", lake_namespaces())
def test_dns_egress_to_kube_dns_by_metadata_name(namespace: str) -> None:
    rules = egress_rules(namespace, 53)
    assert rules, f"no DNS egress in {namespace}: every lookup would hang"
    for policy, rule in rules:
        assert {p.get("protocol", "TCP") for p in rule["ports"]} == {"UDP", "TCP"}, obj_id(policy)
        assert policy["spec"]["podSelector"] == {}, f"{obj_id(policy)}: DNS for every pod"
        for peer in rule["to"]:
            assert peer.get("namespaceSelector") == {
                "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
            }, f"{obj_id(policy)}: select kube-system by kubernetes.io/metadata.name"
            assert peer.get("podSelector") == {"matchLabels": {"k8s-app": "kube-dns"}}, obj_id(policy)


def test_no_namespace_selected_by_a_label_namespaces_do_not_carry() -> None:
    for policy in objects("NetworkPolicy"):
        for direction in ("ingress", "egress"):
            for rule in policy["spec"].get(direction, []):
                for peer in rule.get("to", []) + rule.get("from", []):
                    selector = peer.get("namespaceSelector")
                    if selector is not None:
                        keys = set(selector.get("matchLabels", {}))
                        keys |= {e["key"] for e in selector.get("matchExpressions", [])}
                        assert keys == {"kubernetes.io/metadata.name"}, (
                            f"{obj_id(policy)}: namespaces carry only kubernetes.io/metadata.name for sure"
                        )


@pytest.mark.parametrize("namespace", lake_namespaces())
def test_s3_egress_is_an_ip_block_on_443(namespace: str) -> None:
    rules = egress_rules(namespace, 443)
    assert rules, f"no S3 egress in {namespace}"
    for policy, rule in rules:
        assert {p.get("protocol", "TCP") for p in rule["ports"]} == {"TCP"}
        for peer in rule["to"]:
            assert set(peer) == {"ipBlock"}, f"{obj_id(policy)}: an external endpoint only matches an ipBlock"
            ipaddress.ip_network(peer["ipBlock"]["cidr"])
            assert peer["ipBlock"]["cidr"] not in ("0.0.0.0/0", "::/0"), "S3 egress open to the internet"


def test_postgres_egress_by_namespace_and_pod_selector() -> None:
    rules = egress_rules("analytics-jobs", 5432)
    assert rules, "no PostgreSQL egress for the jobs"
    for policy, rule in rules:
        for peer in rule["to"]:
            # Both selectors in ONE peer: namespace AND pod. Separate peers would mean OR.
            assert "namespaceSelector" in peer and "podSelector" in peer, obj_id(policy)
            assert peer["podSelector"].get("matchLabels"), obj_id(policy)
            # The seed's database: postgres.robson-prod (docs/deploy.md, "Network").
            assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "robson-prod"}
    assert not egress_rules("datalake-system", 5432), "datalake-system never talks to PostgreSQL"


@pytest.mark.parametrize("obj", workloads(), ids=obj_id)
def test_pod_is_selected_by_its_namespace_allow_policies(obj: dict) -> None:
    labels = pod_template(obj)["metadata"].get("labels", {})
    needed = {53, 443} | ({5432} if obj["metadata"]["namespace"] == "analytics-jobs" else set())
    for port in needed:
        selectors = [p["spec"]["podSelector"] for p, _ in egress_rules(obj["metadata"]["namespace"], port)]
        assert any(
            all(labels.get(k) == v for k, v in s.get("matchLabels", {}).items()) for s in selectors
        ), f"no egress policy for port {port} selects this pod"


# --------------------------------------------------------------------------- secrets, RBAC, env


def test_no_secret_with_data_is_applied() -> None:
    for obj in applied_objects():
        if obj["kind"] == "Secret":
            assert not obj.get("data") and not obj.get("stringData"), f"{obj_id(obj)} carries data"


def test_secret_templates_hold_placeholders_only() -> None:
    templates = sorted(SECRET_TEMPLATES.glob("*.template.yaml"))
    assert templates, "no secret templates"
    for path in templates:
        for doc in load_docs(path):
            assert doc["kind"] == "Secret" and "data" not in doc, rel(path)
            assert doc["metadata"]["namespace"] == "analytics-jobs"
            for key, value in doc["stringData"].items():
                assert key in ALLOWED_ENV, f"{rel(path)}: {key} is not a variable the binaries read"
                if SECRET_KEY_PATTERN.search(key):
                    assert value == PLACEHOLDER, f"{rel(path)}: {key} must be {PLACEHOLDER}"


def test_service_account_has_no_token_and_no_role() -> None:
    accounts = objects("ServiceAccount")
    assert {(a["metadata"]["namespace"], a["metadata"]["name"]) for a in accounts} >= {
        ("analytics-jobs", "lake-jobs")
    }
    for account in accounts:
        assert account.get("automountServiceAccountToken") is False, obj_id(account)
    assert not [o for o in applied_objects() if o["kind"] in RBAC_KINDS], "the jobs never call the API"


@pytest.mark.parametrize("obj", workloads(), ids=obj_id)
def test_env_names_are_known_and_required_ones_set(obj: dict) -> None:
    for c in containers(pod_template(obj)["spec"]):
        names = container_env_names(c)
        unknown = {n: src for n, src in names.items() if n not in ALLOWED_ENV}
        assert not unknown, f"container {c['name']}: variables the binaries do not read: {unknown}"
        # `lake status` and lake-maintain read only the lake: no database settings.
        required = set() if c.get("command") in LAKE_ONLY else REQUIRED_ENV
        missing = required - set(names)
        assert not missing, f"container {c['name']}: required variables not set: {sorted(missing)}"
        roots = LAKE_ROOT_ENV & set(names)
        assert len(roots) == 1, f"container {c['name']}: exactly one of S3_BUCKET and LAKE_URL, got {roots}"
        env = {v["name"]: v.get("value") for v in c.get("env", [])}
        assert env.get("LOG_FORMAT") == "json", f"container {c['name']}: LOG_FORMAT=json"


# --------------------------------------------------------------------------- docs and recipes


def test_allowed_env_matches_the_readme() -> None:
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md not written yet")
    section = readme.read_text().split("## Configuration", 1)
    assert len(section) == 2, "README.md has no '## Configuration' section"
    table = section[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", table, flags=re.MULTILINE))
    assert documented == ALLOWED_ENV, (
        f"README only: {sorted(documented - ALLOWED_ENV)}; test only: {sorted(ALLOWED_ENV - documented)}"
    )


def test_runbook_states_the_validated_kubernetes_version() -> None:
    major_minor = ".".join(KUBERNETES_VERSION.split(".")[:2])
    runbook = (ROOT / "docs" / "deploy.md").read_text()
    assert f"**{major_minor}**" in runbook, f"docs/deploy.md must state Kubernetes {major_minor}"


def just() -> str:
    path = shutil.which("just") or str(Path(sys.executable).parent / "just")
    if not Path(path).exists():
        pytest.fail("just not installed: pip install rust-just into the virtualenv")
    return path


def test_just_deploy_dry_run_renders_in_order_without_a_cluster() -> None:
    result = subprocess.run(
        [just(), "-f", str(DEPLOY / "deploy.just"), "deploy", "--dry-run"],
        capture_output=True,
        text=True,
        check=False,
        # No kubeconfig: proves the dry run never contacts a cluster.
        env={"PATH": f"{Path(kubectl()).parent}:/usr/bin:/bin", "KUBECONFIG": "/nonexistent"},
    )
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    steps = [(d["kind"], d["metadata"]["name"], d.get("spec", {}).get("suspend", False)) for d in docs]
    kinds = [k for k, _, _ in steps]
    order = ["Namespace", "NetworkPolicy", "ServiceAccount"]
    ranks = [order.index(k) for k in kinds if k in order]
    assert ranks == sorted(ranks), "namespaces, policies, RBAC come first, in that order"
    tail = [(k, n, s) for k, n, s in steps if k in ("Job", "CronJob")]
    cronjobs = sorted({n for k, n, _ in tail if k == "CronJob"})
    assert tail == (
        [("Job", "smoke-test", False)]
        + [("CronJob", n, True) for n in cronjobs]
        + [("Job", "bronze-ingest-manual", False), ("Job", "silver-transform-manual", False)]
        + [("CronJob", n, False) for n in cronjobs]
    ), "smoke test, CronJobs suspended, the first export (bronze, then silver), CronJobs running"
    rendered = {(d["kind"], d["metadata"]["name"]) for d in docs}
    expected = {(d["kind"], d["metadata"]["name"]) for d in kustomize_build(DEPLOY)[1]}
    manual = {("Job", "smoke-test"), ("Job", "bronze-ingest-manual"), ("Job", "silver-transform-manual")}
    assert rendered == expected | manual


def run_deploy(tmp_path: Path, *args: str, **state) -> tuple[subprocess.CompletedProcess, dict]:
    """`just deploy` against tests/fake_kubectl.py (a recording stand-in: no cluster here)."""
    return run_recipe(tmp_path, "deploy", *args, **state)


def run_recipe(tmp_path: Path, recipe: str, *args: str, **state) -> tuple[subprocess.CompletedProcess, dict]:
    """A deploy.just recipe against the stand-in, from `state` (its defaults: both Secrets)."""
    state_file = tmp_path / "kubectl-state.json"
    initial = {"secrets": ["lake-postgres", "lake-s3"], "annotations": {}, "jobs": {}, "applied": []}
    initial.update(state)
    state_file.write_text(json.dumps(initial))
    result = subprocess.run(
        [just(), "-f", str(DEPLOY / "deploy.just"), recipe, *args],
        capture_output=True,
        text=True,
        check=False,
        env={
            "PATH": "/usr/bin:/bin",
            "KUBECTL": f"{sys.executable} {DEPLOY / 'tests' / 'fake_kubectl.py'}",
            "FAKE_KUBECTL_STATE": str(state_file),
            "REAL_KUBECTL": kubectl(),
        },
    )
    return result, json.loads(state_file.read_text())


def test_just_deploy_runs_the_first_export_before_the_schedules(tmp_path: Path) -> None:
    result, state = run_deploy(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    applied = [(k, n, s) for k, n, s in state["applied"] if k in ("Job", "CronJob")]
    first_running = min(i for i, (k, _, s) in enumerate(applied) if k == "CronJob" and not s)
    before = applied[:first_running]
    assert ("Job", "silver-transform-manual", False) in before, "the schedules start only after the first export"
    assert before.index(("Job", "bronze-ingest-manual", False)) < before.index(
        ("Job", "silver-transform-manual", False)
    )
    assert all(s for k, _, s in before if k == "CronJob"), "every CronJob applied before that is suspended"
    assert state["annotations"].get("robson.io/first-export-completed"), "the marker is set"
    # The next deploy sees the marker: no Job, the CronJobs applied as they are (not suspended).
    again, state = run_deploy(tmp_path, annotations=state["annotations"])
    assert again.returncode == 0, again.stdout + again.stderr
    kinds = {(k, s) for k, _, s in state["applied"] if k in ("Job", "CronJob")}
    assert kinds == {("Job", False), ("CronJob", False)}, "only the smoke test runs again"
    assert {n for k, n, _ in state["applied"] if k == "Job"} == {"smoke-test"}


def test_just_deploy_keeps_the_schedules_suspended_when_the_first_export_fails(tmp_path: Path) -> None:
    result, state = run_deploy(tmp_path, fail_jobs=["bronze-ingest-manual"])
    assert result.returncode == 1
    assert "job/bronze-ingest-manual failed" in result.stderr and "stay suspended" in result.stderr
    assert all(s for k, _, s in state["applied"] if k == "CronJob")
    assert not any(n == "silver-transform-manual" for _, n, _ in state["applied"])
    assert "robson.io/first-export-completed" not in state["annotations"]
    # Run again without deleting it: the failed Job is reported, not re-applied or waited for.
    again, _ = run_deploy(tmp_path, jobs={"bronze-ingest-manual": "Failed"})
    assert again.returncode == 1 and "failed earlier" in again.stderr


def test_just_deploy_no_first_export_leaves_the_schedules_suspended(tmp_path: Path) -> None:
    result, state = run_deploy(tmp_path, "--no-first-export")
    assert result.returncode == 0, result.stderr
    assert {n for k, n, _ in state["applied"] if k == "Job"} == {"smoke-test"}
    assert all(s for k, _, s in state["applied"] if k == "CronJob")
    # The first export run by hand: the next deploy finds the Jobs complete and starts the schedules.
    done = {"bronze-ingest-manual": "Complete", "silver-transform-manual": "Complete"}
    again, state = run_deploy(tmp_path, jobs=done)
    assert again.returncode == 0, again.stderr
    assert "already completed" in again.stdout
    assert {n for k, n, _ in state["applied"] if k == "Job"} == {"smoke-test"}
    assert state["applied"][-1][0] == "CronJob" and not state["applied"][-1][2]
    assert state["annotations"].get("robson.io/first-export-completed")


def test_just_deploy_keeps_monitoring_once_deployed_with_it(tmp_path: Path) -> None:
    result, state = run_deploy(tmp_path, "--monitoring")
    assert result.returncode == 0, result.stdout + result.stderr
    assert ["NetworkPolicy", "allow-pushgateway-egress", False] in state["applied"]
    assert ["PrometheusRule", "robson-lake", False] in state["applied"]
    assert all("PUSHGATEWAY_URL" in env for env in state["env"].values()), "the running CronJobs push"
    assert state["annotations"].get("robson.io/monitoring") == "enabled"
    # A later plain `just deploy` must not drop the metrics (deploy/cronjobs alone would).
    again, state = run_deploy(tmp_path, annotations=state["annotations"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert "enabled by an earlier deploy" in again.stdout
    assert state["env"] and all("PUSHGATEWAY_URL" in env for env in state["env"].values())
    # --no-monitoring drops it, its rules and egress too (the stopped pushes would
    # otherwise raise "stale"), and the choice is forgotten.
    off, state = run_deploy(tmp_path, "--no-monitoring", annotations=state["annotations"])
    assert off.returncode == 0, off.stdout + off.stderr
    assert state["env"] and not any("PUSHGATEWAY_URL" in env for env in state["env"].values())
    assert ["prometheusrule", "robson-lake"] in state["deleted"]
    assert ["networkpolicy", "allow-pushgateway-egress"] in state["deleted"]
    assert "robson.io/monitoring" not in state["annotations"]


def test_just_deploy_remembers_monitoring_when_it_stops_early(tmp_path: Path) -> None:
    # --no-first-export stops at step 6 and says "run just deploy again": that
    # plain rerun must still deploy with monitoring.
    result, state = run_deploy(tmp_path, "--monitoring", "--no-first-export")
    assert result.returncode == 0, result.stdout + result.stderr
    assert state["annotations"].get("robson.io/monitoring") == "enabled"
    done = {"bronze-ingest-manual": "Complete", "silver-transform-manual": "Complete"}
    again, state = run_deploy(tmp_path, annotations=state["annotations"], jobs=done)
    assert again.returncode == 0, again.stdout + again.stderr
    running = [n for k, n, s in state["applied"] if k == "CronJob" and not s]
    assert running and all("PUSHGATEWAY_URL" in state["env"][n] for n in running)


def test_just_deploy_monitoring_without_the_operator_stops_before_scheduling(tmp_path: Path) -> None:
    result, state = run_deploy(tmp_path, "--monitoring", no_prometheus_operator=True)
    assert result.returncode == 1
    assert "PrometheusRule kind" in result.stderr and "rules/robson-lake.rules.yml" in result.stderr
    assert not any(k in ("Job", "CronJob", "PrometheusRule") for k, _, _ in state["applied"])
    assert "robson.io/monitoring" not in state["annotations"], "a refused choice is not remembered"
    # undeploy of such a cluster skips the kind it does not have.
    gone, state = run_recipe(
        tmp_path, "undeploy", annotations={"robson.io/monitoring": "enabled"}, no_prometheus_operator=True
    )
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert not any(d[0] == "prometheusrule" for d in state["deleted"])
    assert ["networkpolicy", "allow-pushgateway-egress"] in state["deleted"]


def test_just_undeploy_removes_the_alert_rules_of_a_monitored_deployment(tmp_path: Path) -> None:
    result, state = run_recipe(tmp_path, "undeploy", annotations={"robson.io/monitoring": "enabled"})
    assert result.returncode == 0, result.stdout + result.stderr
    deleted = state["deleted"]
    assert ["-k", "deploy/cronjobs"] in deleted
    assert ["prometheusrule", "robson-lake"] in deleted, "left behind, its alerts would fire for stopped jobs"
    assert ["networkpolicy", "allow-pushgateway-egress"] in deleted
    assert "robson.io/monitoring" not in state["annotations"]
    # Without monitoring, nothing of it is touched (the PrometheusRule kind may not even exist).
    plain, state = run_recipe(tmp_path, "undeploy")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert not any(d[0] == "prometheusrule" for d in state["deleted"])


def test_just_deploy_stops_before_anything_runs_when_a_secret_is_missing(tmp_path: Path) -> None:
    result, state = run_deploy(tmp_path, secrets=["lake-postgres"])
    assert result.returncode == 1
    assert "Secret analytics-jobs/lake-s3 is missing" in result.stderr
    assert not any(k in ("Job", "CronJob") for k, _, _ in state["applied"])


def test_the_image_is_named_once_in_a_component(tmp_path: Path) -> None:
    component = yaml.safe_load((DEPLOY / "components" / "image" / "kustomization.yaml").read_text())
    (image,) = component["images"]
    default = f"{image['newName']}:{image['newTag']}"
    # `kubectl apply -f` of a file gets the same image as the kustomizations.
    for w in workloads():
        for c in containers(pod_template(w)["spec"]):
            assert c["image"] == default, f"{obj_id(w)}: {c['image']} is not the component's {default}"
    # Changing the component changes every rendered pod template.
    copy = tmp_path / "deploy"
    shutil.copytree(DEPLOY, copy, ignore=shutil.ignore_patterns("tests", "__pycache__"))
    edited = dict(image, newName="registry.example.com/robson/deep-storage", newTag="9.9.9")
    component["images"] = [edited]
    (copy / "components" / "image" / "kustomization.yaml").write_text(yaml.safe_dump(component))
    for directory in ("", "jobs", "cronjobs", "overlays/monitoring", "overlays/suspended"):
        out = subprocess.run(
            [kubectl(), "kustomize", str(copy / directory)], capture_output=True, text=True, check=True
        ).stdout
        docs = [d for d in yaml.safe_load_all(out) if d and d["kind"] in POD_KINDS]
        assert docs, directory
        for d in docs:
            for c in containers(pod_template(d)["spec"]):
                assert c["image"] == "registry.example.com/robson/deep-storage:9.9.9", (directory, obj_id(d))
    # `just image` and `just image-save` build and save that same name.
    shutil.copy(DEPLOY.parent / "Cargo.toml", tmp_path / "Cargo.toml")
    named = subprocess.run([copy / "image-name.sh"], capture_output=True, text=True, check=True).stdout
    assert named.strip() == "registry.example.com/robson/deep-storage:9.9.9"
    assert subprocess.run([DEPLOY / "image-name.sh"], capture_output=True, text=True, check=True).stdout.strip() == default


# --------------------------------------------------------------------------- monitoring


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: `just setup` installs Debian's prometheus package")
    return path


def test_alert_rules_pass_promtool_check_and_unit_tests() -> None:
    rules = MONITORING_RULES / "robson-lake.rules.yml"
    for args in (["check", "rules", str(rules)], ["test", "rules", "tests.yml"]):
        result = subprocess.run(
            [promtool(), *args], cwd=MONITORING_RULES, capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


def test_prometheus_rule_holds_exactly_the_rule_file() -> None:
    (rule,) = [d for d in load_docs(MONITORING / "prometheus-rule.yaml") if d["kind"] == "PrometheusRule"]
    plain = yaml.safe_load((MONITORING_RULES / "robson-lake.rules.yml").read_text())
    assert rule["spec"] == plain, "deploy/monitoring/prometheus-rule.yaml and rules/robson-lake.rules.yml differ"


def test_every_alert_has_a_runbook_section() -> None:
    runbook = (ROOT / "docs" / "deploy.md").read_text()
    plain = yaml.safe_load((MONITORING_RULES / "robson-lake.rules.yml").read_text())
    for group in plain["groups"]:
        for rule in group["rules"]:
            url = rule["annotations"]["runbook_url"]
            anchor = url.split("#", 1)[1]
            assert f'<a id="{anchor}"></a>' in runbook, f"{rule['alert']}: docs/deploy.md has no #{anchor}"
            assert rule["alert"] in runbook, f"{rule['alert']} is not explained in docs/deploy.md"


def test_with_monitoring_every_scheduled_pod_pushes_through_an_allowed_egress() -> None:
    docs = kustomize_build(MONITORING_OVERLAY)[1]
    policies = [d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["namespace"] == "analytics-jobs"]
    opening = [
        p
        for p in policies
        for rule in p["spec"].get("egress", [])
        if any(port.get("port") == PUSHGATEWAY_PORT for port in rule.get("ports", []))
    ]
    assert opening, "no egress policy opens the Pushgateway's port"
    cronjobs = [d for d in docs if d["kind"] == "CronJob"]
    assert {c["metadata"]["name"] for c in cronjobs} >= {"bronze-ingest", "silver-transform"}
    for cronjob in cronjobs:
        pod = pod_template(cronjob)
        for c in pod["spec"]["containers"]:
            env = {v["name"]: v.get("value") for v in c.get("env", [])}
            assert env.get("PUSHGATEWAY_URL", "").startswith("http://"), f"{obj_id(cronjob)}: no PUSHGATEWAY_URL"
        labels = pod["metadata"].get("labels", {})
        assert any(
            all(labels.get(k) == v for k, v in p["spec"]["podSelector"].get("matchLabels", {}).items())
            for p in opening
        ), f"{obj_id(cronjob)}: no Pushgateway egress policy selects its pods"
    # Nothing else changes: the overlay is the deployment plus monitoring.
    base = {(d["kind"], d["metadata"]["name"]) for d in kustomize_build(DEPLOY)[1]}
    extra = {(d["kind"], d["metadata"]["name"]) for d in docs} - base
    assert extra == {("NetworkPolicy", "allow-pushgateway-egress"), ("PrometheusRule", "robson-lake")}


# --------------------------------------------------------------------------- the smoke gate

SMOKE_GATE = DEPLOY / "smoke-gate.sh"
# The table format of smoke-test/src/report.rs (its unit test pins the same lines).
SMOKE_WARNED = """PASS  config                 all set
WARN  postgres.privileges     lake_reader is a superuser; fix: use a role with SELECT only
WARN  s3.conditional          the store ignores If-None-Match; fix: S3_CONDITIONAL_WRITES=disabled
PASS  s3.bucket              robson-lake

smoke-test OK: 2 passed, 2 warnings, 0 failed, 0 skipped
"""


def smoke_gate(table: str, accepted: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SMOKE_GATE), accepted], input=table, capture_output=True, text=True, check=False
    )


def test_the_smoke_gate_stops_on_warnings_unless_each_is_accepted() -> None:
    stopped = smoke_gate(SMOKE_WARNED)
    assert stopped.returncode == 1, stopped.stderr
    assert "postgres.privileges,s3.conditional" in stopped.stderr
    assert "--accept-warnings=" in stopped.stderr
    partly = smoke_gate(SMOKE_WARNED, "postgres.privileges")
    assert partly.returncode == 1 and "s3.conditional" in partly.stderr
    assert "postgres.privileges" not in partly.stderr.split("warned about:")[1]
    assert smoke_gate(SMOKE_WARNED, "postgres.privileges,s3.conditional").returncode == 0
    clean = SMOKE_WARNED.replace("WARN", "PASS")
    assert smoke_gate(clean).returncode == 0
    assert smoke_gate("no table here\n").returncode == 2, "a log without a verdict never passes"


def test_just_deploy_runs_the_gate_after_the_smoke_test() -> None:
    recipe = (DEPLOY / "deploy.just").read_text()
    assert "deploy/smoke-gate.sh" in recipe and "--accept-warnings=" in recipe
