#!/usr/bin/env python3
"""Renders every kustomize overlay under deploy/kubernetes/overlays and validates it offline.

Checks, per overlay:
- every built-in resource against the Kubernetes OpenAPI schemas (kubernetes-validate, strict:
  unknown fields are errors);
- LeaderWorkerSets against the committed CRD schema (deploy/schemas), and their leader and
  worker pod templates against the Kubernetes PodTemplateSpec schema;
- ServiceMonitors against the committed CRD schema;
- moeflow's own rules: every `$(VAR)` in container args is defined, each group's size equals
  the router's --prefill-workers/--decode-workers, each placement plan is well formed and has
  that many ranks, the router probes /health and outlives its drain, the worker pods leave
  the LWS_* variables to the LWS controller, every referenced ConfigMap and PVC is rendered,
  and (with --moeflow BIN) every flag in the manifests is a flag of that command.
And the Dockerfile: hadolint (deploy/.hadolint.yaml) plus the stages and users the docs
promise.

Prints one line per check and a final `N passed, N failed`; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml

DEPLOY = Path(__file__).resolve().parent
OVERLAYS = DEPLOY / "kubernetes" / "overlays"
SCHEMAS = {
    ("leaderworkerset.x-k8s.io/v1", "LeaderWorkerSet"): "leaderworkerset.x-k8s.io_v1_leaderworkerset.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "monitoring.coreos.com_v1_servicemonitor.json",
}
ROLES = ("prefill", "decode")
VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def check(self, name: str, errors: list[str]) -> None:
        if errors:
            self.failed += 1
            print(f"FAIL {name}")
            for e in errors:
                print(f"     {e}")
        else:
            self.passed += 1
            print(f"ok   {name}")


def render(kubectl: str, overlay: Path) -> list[dict]:
    out = subprocess.run(
        [kubectl, "kustomize", str(overlay)], check=True, capture_output=True, text=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def pod_templates(doc: dict) -> list[tuple[str, dict]]:
    """The pod templates of a workload, by where they sit."""
    kind = doc.get("kind")
    spec = doc.get("spec", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [("spec.template", spec.get("template", {}))]
    if kind == "LeaderWorkerSet":
        lwt = spec.get("leaderWorkerTemplate", {})
        found = [("workerTemplate", lwt.get("workerTemplate", {}))]
        if "leaderTemplate" in lwt:
            found.append(("leaderTemplate", lwt["leaderTemplate"]))
        return found
    return []


def containers(template: dict) -> list[dict]:
    spec = template.get("spec", {})
    return spec.get("initContainers", []) + spec.get("containers", [])


def name_of(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def schema_errors(docs: list[dict], k8s_version: str) -> list[str]:
    errors = []
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        if key in SCHEMAS:
            schema = json.loads((DEPLOY / "schemas" / SCHEMAS[key]).read_text())
            v = jsonschema.Draft202012Validator(schema)
            errors += [f"{name_of(doc)}: {e.json_path}: {e.message}" for e in v.iter_errors(doc)]
            for where, tmpl in pod_templates(doc):
                wrapped = {
                    "apiVersion": "v1",
                    "kind": "PodTemplate",
                    "metadata": {"name": f"{doc['metadata']['name']}-{where.lower()}"},
                    "template": tmpl,
                }
                errors += k8s_errors(wrapped, k8s_version, f"{name_of(doc)} {where}")
        else:
            errors += k8s_errors(doc, k8s_version, name_of(doc))
    return errors


def k8s_errors(doc: dict, version: str, label: str) -> list[str]:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{label}: {'.'.join(str(p) for p in e.path)}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError:
        return [f"{label}: no schema for {doc.get('apiVersion')} {doc.get('kind')} (a CRD without a committed schema?)"]
    return []


def config_map(docs: list[dict], prefix: str) -> dict | None:
    for d in docs:
        n = d.get("metadata", {}).get("name", "")
        if d.get("kind") == "ConfigMap" and (n == prefix or re.fullmatch(re.escape(prefix) + r"-[a-z0-9]{10}", n)):
            return d
    return None


def env_errors(docs: list[dict]) -> list[str]:
    """Every $(VAR) in args/command is defined by env or envFrom (Kubernetes would leave an
    undefined one as literal text)."""
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d.get("kind") == "ConfigMap"}
    errors = []
    for doc in docs:
        for where, tmpl in pod_templates(doc):
            for c in containers(tmpl):
                defined = {e["name"] for e in c.get("env", [])}
                for src in c.get("envFrom", []):
                    ref = src.get("configMapRef", {}).get("name")
                    if ref is not None:
                        if ref not in maps:
                            errors.append(f"{name_of(doc)} {where} {c['name']}: ConfigMap {ref} is not rendered")
                        defined |= set(maps.get(ref, {}))
                for arg in c.get("args", []) + c.get("command", []):
                    for var in VAR.findall(str(arg)):
                        if var not in defined:
                            errors.append(f"{name_of(doc)} {where} {c['name']}: $({var}) in `{arg}` is not defined")
    return errors


def reference_errors(docs: list[dict]) -> list[str]:
    names = {(d.get("kind"), d.get("metadata", {}).get("name")) for d in docs}
    errors = []
    for doc in docs:
        for where, tmpl in pod_templates(doc):
            for vol in tmpl.get("spec", {}).get("volumes", []):
                if "configMap" in vol and ("ConfigMap", vol["configMap"]["name"]) not in names:
                    errors.append(f"{name_of(doc)} {where}: volume {vol['name']}: ConfigMap {vol['configMap']['name']} is not rendered")
                pvc = vol.get("persistentVolumeClaim")
                if pvc and ("PersistentVolumeClaim", pvc["claimName"]) not in names:
                    errors.append(f"{name_of(doc)} {where}: volume {vol['name']}: PVC {pvc['claimName']} is not rendered")
    return errors


def port_errors(docs: list[dict]) -> list[str]:
    """Probes and Services name ports that the containers declare."""
    errors = []
    pods: list[tuple[str, dict, dict]] = []
    for doc in docs:
        for where, tmpl in pod_templates(doc):
            pods.append((f"{name_of(doc)} {where}", tmpl.get("metadata", {}).get("labels", {}), tmpl))
            for c in tmpl.get("spec", {}).get("containers", []):
                names = {p.get("name") for p in c.get("ports", [])}
                for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                    p = c.get(probe)
                    if not p:
                        continue
                    port = (p.get("httpGet") or p.get("tcpSocket") or p.get("grpc") or {}).get("port")
                    if isinstance(port, str) and port not in names:
                        errors.append(f"{name_of(doc)} {where} {c['name']}: {probe} port {port!r} is not a declared port")
    for svc in (d for d in docs if d.get("kind") == "Service"):
        sel = svc["spec"].get("selector", {})
        matched = [t for (label, labels, t) in pods if sel and all(labels.get(k) == v for k, v in sel.items())]
        if not matched:
            errors.append(f"{name_of(svc)}: its selector matches no pod template")
            continue
        names = {p.get("name") for t in matched for c in t["spec"]["containers"] for p in c.get("ports", [])}
        for p in svc["spec"].get("ports", []):
            tp = p.get("targetPort")
            if isinstance(tp, str) and tp not in names:
                errors.append(f"{name_of(svc)}: targetPort {tp!r} is not a port of the selected pods")
    return errors


def router(docs: list[dict]) -> dict | None:
    for d in docs:
        if d.get("kind") == "Deployment" and d["metadata"]["name"] == "moeflow-router":
            return d
    return None


def topology_errors(docs: list[dict]) -> list[str]:
    """Group sizes, router flags and placement plans agree."""
    cfg = config_map(docs, "moeflow-config")
    if cfg is None:
        return ["ConfigMap moeflow-config is not rendered"]
    data = cfg.get("data", {})
    errors = []
    for role in ROLES:
        key = f"{role.upper()}_WORKERS"
        lws = next((d for d in docs if d.get("kind") == "LeaderWorkerSet" and d["metadata"]["name"] == f"moeflow-{role}"), None)
        if lws is None:
            errors.append(f"LeaderWorkerSet moeflow-{role} is not rendered")
            continue
        size = lws["spec"]["leaderWorkerTemplate"].get("size", 1)
        try:
            want = int(data.get(key, ""))
        except ValueError:
            errors.append(f"moeflow-config {key}={data.get(key)!r} is not a number")
            continue
        if size != want:
            errors.append(f"LeaderWorkerSet moeflow-{role} has size {size} but {key}={want} (the router's --{role}-workers)")
        if lws["spec"].get("replicas", 1) != 1:
            errors.append(f"LeaderWorkerSet moeflow-{role}: replicas must be 1 (the router drives one {role} group)")
        plan_cm = config_map(docs, f"moeflow-placement-{role}")
        if plan_cm is None:
            errors.append(f"ConfigMap moeflow-placement-{role} is not rendered")
            continue
        errors += [f"moeflow-placement-{role} plan.json: {e}" for e in plan_errors(plan_cm.get("data", {}).get("plan.json"), size)]
    return errors


def plan_errors(text: str | None, ranks: int) -> list[str]:
    if text is None:
        return ["missing"]
    try:
        plan = json.loads(text)
    except json.JSONDecodeError as e:
        return [f"not JSON: {e}"]
    if plan.get("format") != "moeflow.placement/v1":
        return [f"format is {plan.get('format')!r}, not moeflow.placement/v1"]
    errors = []
    if plan.get("num_ranks") != ranks:
        errors.append(f"num_ranks is {plan.get('num_ranks')} but the group has {ranks} ranks")
    experts = plan.get("num_experts")
    if not isinstance(experts, int) or experts < 1:
        return errors + [f"num_experts is {experts!r}"]
    layers = plan.get("layers")
    if not isinstance(layers, dict) or not layers:
        return errors + ["layers is missing or empty"]
    for layer, per_rank in layers.items():
        if not layer.isdigit():
            errors.append(f"layer key {layer!r} is not a number")
        if not isinstance(per_rank, list) or len(per_rank) != plan.get("num_ranks"):
            errors.append(f"layer {layer}: {len(per_rank) if isinstance(per_rank, list) else per_rank!r} rank lists, not num_ranks")
            continue
        hosted = set()
        for r, ids in enumerate(per_rank):
            if len(set(ids)) != len(ids):
                errors.append(f"layer {layer} rank {r}: an expert listed twice")
            bad = [e for e in ids if not isinstance(e, int) or not 0 <= e < experts]
            if bad:
                errors.append(f"layer {layer} rank {r}: experts {bad} outside 0..{experts}")
            hosted |= set(ids)
        missing = sorted(set(range(experts)) - hosted)
        if missing:
            errors.append(f"layer {layer}: experts {missing[:8]} hosted on no rank")
    return errors


def router_errors(docs: list[dict]) -> list[str]:
    dep = router(docs)
    if dep is None:
        return ["Deployment moeflow-router is not rendered"]
    errors = []
    spec = dep["spec"]
    if spec.get("replicas", 1) != 1:
        errors.append("the router must run as exactly one replica")
    if spec.get("strategy", {}).get("type") != "Recreate":
        errors.append("the router's strategy must be Recreate (two routers cannot share the groups)")
    pod = spec["template"]["spec"]
    c = next(c for c in pod["containers"] if c["name"] == "router")
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        path = c.get(probe, {}).get("httpGet", {}).get("path")
        if path != "/health":
            errors.append(f"router {probe} must GET /health (has {path!r})")
    cfg = config_map(docs, "moeflow-config") or {}
    drain = int(cfg.get("data", {}).get("DRAIN_TIMEOUT_S", "30"))
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if grace <= drain:
        errors.append(f"terminationGracePeriodSeconds {grace} must exceed DRAIN_TIMEOUT_S {drain} so the SIGTERM drain finishes")
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    svc = next((d for d in docs if d.get("kind") == "Service" and d["metadata"]["name"] == "moeflow-router"), None)
    if svc is None:
        errors.append("Service moeflow-router is not rendered")
    else:
        exposed = {p["name"] for p in svc["spec"]["ports"]}
        for want in ("http", "grpc"):
            if want not in exposed or want not in ports:
                errors.append(f"Service moeflow-router must expose the router's `{want}` port")
    reg = next((d for d in docs if d.get("kind") == "Service" and d["metadata"]["name"] == "moeflow-router-registry"), None)
    if reg is None or not reg["spec"].get("publishNotReadyAddresses"):
        errors.append("Service moeflow-router-registry must publish not-ready addresses (workers register before the router is ready)")
    return errors


def worker_errors(docs: list[dict]) -> list[str]:
    errors = []
    for doc in docs:
        if doc.get("kind") != "LeaderWorkerSet":
            continue
        for where, tmpl in pod_templates(doc):
            for c in tmpl["spec"]["containers"]:
                own = [e["name"] for e in c.get("env", []) if e["name"].startswith("LWS_")]
                if own:
                    errors.append(f"{name_of(doc)} {where}: sets {own}; the LWS controller injects them")
                if not c.get("args") or c["args"][0] != "worker":
                    errors.append(f"{name_of(doc)} {where}: container {c['name']} does not run `moeflow worker`")
    return errors


def flag_errors(docs: list[dict], binary: str) -> list[str]:
    helps: dict[str, str] = {}
    errors = []
    for doc in docs:
        for where, tmpl in pod_templates(doc):
            for c in containers(tmpl):
                args = [str(a) for a in c.get("args", [])]
                if not args or args[0].startswith("-"):
                    continue
                sub = args[0]
                if sub not in helps:
                    r = subprocess.run([binary, sub, "--help"], capture_output=True, text=True)
                    if r.returncode != 0:
                        errors.append(f"{name_of(doc)}: `moeflow {sub}` is not a command")
                        helps[sub] = ""
                        continue
                    helps[sub] = r.stdout
                for a in args[1:]:
                    if a.startswith("--"):
                        flag = a.split("=", 1)[0]
                        if not re.search(re.escape(flag) + r"(?![A-Za-z0-9-])", helps[sub]):
                            errors.append(f"{name_of(doc)} {where} {c['name']}: `moeflow {sub}` has no flag {flag}")
    return errors


def dockerfile_errors(hadolint: str) -> list[str]:
    path = DEPLOY / "Dockerfile"
    errors = []
    r = subprocess.run(
        [hadolint, "--no-color", "--config", str(DEPLOY / ".hadolint.yaml"), str(path)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        errors += [f"hadolint: {l}" for l in (r.stdout + r.stderr).splitlines() if l.strip()]
    stages: list[tuple[str, list[str]]] = []
    for line in path.read_text().splitlines():
        m = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if m:
            stages.append((m.group(1) or "", []))
        elif stages:
            stages[-1][1].append(line)
    by_name = {n: body for n, body in stages}
    if not stages or stages[-1][0] != "runtime":
        errors.append("the last stage must be `runtime` (the CPU image a plain build gives)")
    for name in ("build", "runtime", "build-gpu", "runtime-gpu"):
        if name not in by_name:
            errors.append(f"stage `{name}` is missing")
    for name in ("runtime", "runtime-gpu"):
        users = [l.split()[1] for l in by_name.get(name, []) if l.startswith("USER ")]
        if not users or users[-1].split(":")[0] in ("root", "0"):
            errors.append(f"stage `{name}` must end as a non-root USER")
        if not any(l.startswith("ENTRYPOINT") and "moeflow" in l for l in by_name.get(name, [])):
            errors.append(f"stage `{name}` must have moeflow as its ENTRYPOINT")
    if not any("--features cuda,nccl" in l for l in by_name.get("build-gpu", [])):
        errors.append("stage `build-gpu` must build with --features cuda,nccl")
    return errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kubectl", default="kubectl", help="kubectl with built-in kustomize")
    ap.add_argument("--hadolint", default="hadolint")
    ap.add_argument("--moeflow", help="a built moeflow binary: check the manifests' flags against it")
    ap.add_argument("--kubernetes-version", default=kubernetes_validate.latest_version())
    args = ap.parse_args()
    report = Report()
    overlays = sorted(p for p in OVERLAYS.iterdir() if (p / "kustomization.yaml").exists())
    if not overlays:
        report.check("overlays exist", [f"no overlay under {OVERLAYS}"])
    for overlay in overlays:
        name = overlay.name
        try:
            docs = render(args.kubectl, overlay)
        except subprocess.CalledProcessError as e:
            report.check(f"{name}: renders", [e.stderr.strip()])
            continue
        report.check(f"{name}: renders ({len(docs)} objects)", [])
        report.check(f"{name}: schemas (Kubernetes {args.kubernetes_version}, LWS and ServiceMonitor CRDs)", schema_errors(docs, args.kubernetes_version))
        report.check(f"{name}: $(VAR) references", env_errors(docs))
        report.check(f"{name}: ConfigMap and PVC references", reference_errors(docs))
        report.check(f"{name}: named ports of probes and Services", port_errors(docs))
        report.check(f"{name}: group sizes and placement plans", topology_errors(docs))
        report.check(f"{name}: router probes, drain, services", router_errors(docs))
        report.check(f"{name}: worker groups", worker_errors(docs))
        if args.moeflow:
            report.check(f"{name}: flags exist in {args.moeflow}", flag_errors(docs, args.moeflow))
    report.check("Dockerfile: hadolint, stages, users", dockerfile_errors(args.hadolint))
    print(f"{report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
