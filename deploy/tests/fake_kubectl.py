#!/usr/bin/env python3
"""A recording stand-in for kubectl, for the tests of `just deploy`'s sequencing.

No cluster runs here, so the recipe's control flow (the order of the steps, the
suspended CronJobs, the first export, the marker, stopping on a failed Job) is
tested against this: it renders `apply -k` with the real kubectl (so the objects
it records are exactly what a cluster would receive), remembers Jobs, Secrets and
annotations in a JSON state file, and answers the few queries the recipe makes.

State file (FAKE_KUBECTL_STATE): {"secrets": [...], "annotations": {...},
"jobs": {name: conditions}, "fail_jobs": [...], "applied": [[kind, name, suspend]],
"env": {cronjob: [the variables of its container, as last applied]},
"deleted": [what delete was called with], "no_prometheus_operator": true to lack its CRDs}.
A Job applied here completes at once, or fails when its name is in fail_jobs.
"""

import json
import os
import subprocess
import sys

import yaml

STATE = os.environ["FAKE_KUBECTL_STATE"]
REAL = os.environ["REAL_KUBECTL"]


def load() -> dict:
    with open(STATE) as f:
        return json.load(f)


def save(state: dict) -> None:
    with open(STATE, "w") as f:
        json.dump(state, f)


def option(args: list[str], *names: str) -> str | None:
    for i, a in enumerate(args):
        for n in names:
            if a == n and i + 1 < len(args):
                return args[i + 1]
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def main(args: list[str]) -> int:
    state = load()
    state.setdefault("calls", []).append(args)
    # Drop option values that are separate words (-n NS, -k DIR, -l SEL, -o FMT, -p JSON).
    skip = set()
    for i, a in enumerate(args):
        if a in ("-n", "-k", "-l", "-o", "-p", "--tail") and i + 1 < len(args):
            skip.add(i + 1)
    words = [a for i, a in enumerate(args) if i not in skip and not a.startswith("-")]
    verb = words[0] if words else ""
    code = 0
    if words[:2] == ["config", "current-context"]:
        print("fake-cluster")
    elif verb == "kustomize":
        print(subprocess.run([REAL, "kustomize", words[1]], capture_output=True, text=True, check=True).stdout)
    elif verb == "api-resources":
        # The Prometheus operator's kinds, unless the state says it is not installed.
        if not state.get("no_prometheus_operator"):
            print("alertmanagers.monitoring.coreos.com\nprometheusrules.monitoring.coreos.com")
    elif verb == "apply":
        directory = option(args, "-k")
        selector = option(args, "-l")
        rendered = subprocess.run([REAL, "kustomize", directory], capture_output=True, text=True, check=True)
        for obj in (d for d in yaml.safe_load_all(rendered.stdout) if d):
            labels = obj["metadata"].get("labels", {})
            if selector:
                key, value = selector.split("=", 1)
                if labels.get(key) != value:
                    continue
            name = obj["metadata"]["name"]
            state["applied"].append([obj["kind"], name, obj.get("spec", {}).get("suspend", False)])
            if obj["kind"] == "CronJob":
                container = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
                state.setdefault("env", {})[name] = [v["name"] for v in container.get("env", [])]
            if obj["kind"] == "Job":
                state["jobs"][name] = "Failed" if name in state.get("fail_jobs", []) else "Complete"
            print(f"{obj['kind'].lower()}/{name} configured")
    elif verb == "get" and words[1:2] == ["secret"]:
        code = 0 if words[2] in state["secrets"] else 1
    elif verb == "get" and words[1:2] == ["namespace"]:
        # -o jsonpath={.metadata.annotations.robson\.io/NAME}
        jsonpath = option(args, "-o") or ""
        if ".metadata.annotations." in jsonpath:
            key = jsonpath.split(".metadata.annotations.", 1)[1].rstrip("}").replace("\\.", ".")
            print(state["annotations"].get(key, ""), end="")
    elif verb == "get" and words[1:2] == ["job"]:
        name = words[2]
        if name in state["jobs"]:
            print(f"{state['jobs'][name]} .", end="")
    elif verb == "get" and words[1:2] == ["cronjobs"]:
        print("NAME  SCHEDULE  SUSPEND")
    elif verb == "delete" and words[1:2] == ["job"]:
        state["jobs"].pop(words[2], None)
    elif verb == "delete":
        # Recorded as what was deleted: ["-k", DIR] or [kind, name-or-selector].
        target = ["-k", option(args, "-k")] if option(args, "-k") else words[1:] + [option(args, "-l") or ""]
        state.setdefault("deleted", []).append([t for t in target if t])
    elif verb == "logs":
        job = words[1].split("/", 1)[1]
        if job == "smoke-test":
            print("PASS  config  all set\n\nsmoke-test OK: 1 passed, 0 warnings, 0 failed, 0 skipped")
        else:
            print(f"{job}: error: the last lines of a failed run")
    elif verb == "annotate" and words[-1].endswith("-"):
        if state["annotations"].pop(words[-1][:-1], None) is None:
            print(f"error: annotation {words[-1][:-1]!r} not found", file=sys.stderr)
            code = 1
    elif verb == "annotate":
        key, value = words[-1].split("=", 1)
        state["annotations"][key] = value
    else:
        print(f"fake kubectl: unexpected call {args}", file=sys.stderr)
        code = 99
    save(state)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
