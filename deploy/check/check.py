"""Checks the deployment kit as far as a machine without Docker or Kubernetes
allows. Run by .ci/deploy-check, which installs the tools first.

- Kubernetes manifests, both sets (deploy/kubernetes, one broker on the
  embedded store; deploy/kubernetes/postgresql, N brokers on PostgreSQL):
  validated against the Kubernetes API schemas (kubernetes-validate,
  strict: unknown fields are errors), every manifest listed in the
  kustomization, every Secret and ConfigMap the pods use present; the broker
  pod must run as non-root with a read-only root filesystem and every
  capability dropped, with startup and readiness probes on grpc.health.v1
  through `semel health`. The PostgreSQL set: several replicas, no
  persistent volume for the brokers, the database URL from a Secret, the
  audit signing key from a Secret, and the trial database marked as such.
  Both sets, the network: a NetworkPolicy denies every pod of the
  namespace everything both ways (Ingress and Egress, no rule); every
  Deployment's and StatefulSet's pods are selected by a policy that allows
  something; the brokers reach DNS (and, on PostgreSQL, the database on
  5432) and no egress rule is open to everywhere; the metrics port is let in
  only from chosen pods (no rule open to all addresses or all ports); the
  PostgreSQL pods accept only broker pods, only on 5432; the metrics port
  is in no LoadBalancer or NodePort Service and not in the main Service.
  Every container: an image with a tag or digest, never :latest; requests
  and limits of memory and ephemeral-storage.
- docker-compose files: validated against the Compose specification's
  schema; the PostgreSQL one has a database with a health check, a volume
  and synchronous_commit on, and two brokers on it with their own ports.
  No image is :latest. No broker (a service running `semel serve`) mounts a
  file named ca.key or issuer.key: neither through a bind mount, nor in a
  named volume, which the one-shot services that fill it are run for
  (their scripts, with the semel binary and temporary directories for their
  volumes, twice, as two `up`s would) to see what they leave there.
- systemd unit: an IP firewall (IPAddressDeny=any, IPAddressAllow=),
  MemoryMax= and TasksMax= (systemd-analyze itself is run by
  .ci/deploy-check, where installed).
- haproxy.cfg: balances TCP; `haproxy -c` where HAProxy is installed.
- Dockerfile: multi-stage, ends as a non-root user, has a HEALTHCHECK,
  every base image (ARG defaults resolved) has a tag or digest, not latest.
- Every Semel configuration in the kit (deploy/semel.example.toml, the
  ConfigMaps' semel.toml and the compose files' configurations) passes
  `semel serve --check-config`, with development certificates and keys put
  where it expects them, and an audit signing key made with openssl.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
K8S = os.path.join(ROOT, "deploy", "kubernetes")
K8S_POSTGRESQL = os.path.join(K8S, "postgresql")
COMPOSE = os.path.join(ROOT, "deploy", "compose")
K8S_VERSION = "1.31"
failures = []


def check(condition, what):
    print(("ok: " if condition else "FAIL: ") + what)
    if not condition:
        failures.append(what)


def manifests(directory):
    """Every manifest of a kustomization directory, validated; returns them
    by (kind, name)."""
    where = os.path.relpath(directory, ROOT)
    docs = {}
    names = sorted(n for n in os.listdir(directory) if n.endswith(".yaml") and n != "kustomization.yaml")
    for name in names:
        with open(os.path.join(directory, name)) as f:
            for doc in yaml.safe_load_all(f):
                if doc is None:
                    continue
                what = f"{where}/{name}: {doc['kind']} {doc['metadata']['name']}"
                try:
                    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
                    check(True, f"{what}: valid for Kubernetes {K8S_VERSION}")
                except kubernetes_validate.ValidationError as e:
                    check(False, f"{what}: {e.message} at {'.'.join(map(str, e.path))}")
                docs[(doc["kind"], doc["metadata"]["name"])] = doc
    with open(os.path.join(directory, "kustomization.yaml")) as f:
        listed = yaml.safe_load(f)["resources"]
    check(sorted(listed) == names, f"{where}/kustomization.yaml lists every manifest")
    return docs


def broker_pod(docs, where):
    """The checks every broker Deployment passes; returns its pod spec and
    container."""
    deployment = docs[("Deployment", "semel")]
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    check(pod["securityContext"].get("runAsNonRoot") is True, f"{where}: the pod runs as non-root")
    check(container["securityContext"].get("readOnlyRootFilesystem") is True, f"{where}: the root filesystem is read-only")
    check(container["securityContext"]["capabilities"]["drop"] == ["ALL"], f"{where}: every capability is dropped")
    for probe in ["startupProbe", "readinessProbe"]:
        command = container.get(probe, {}).get("exec", {}).get("command", [])
        check(command[:2] == ["semel", "health"], f"{where}: {probe} asks grpc.health.v1 with `semel health`")
    check("livenessProbe" in container, f"{where}: the pod has a liveness probe")
    env = {e["name"]: e for e in container.get("env", [])}
    check(bool(env.get("SEMEL_SERVER_NAME", {}).get("value")),
          f"{where}: the probes know the certificate's DNS name (SEMEL_SERVER_NAME)")
    # Every Secret and ConfigMap the pod names is in the set.
    used = []
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            used.append(("Secret", volume["secret"]["secretName"]))
        if "configMap" in volume:
            used.append(("ConfigMap", volume["configMap"]["name"]))
    for e in env.values():
        ref = e.get("valueFrom", {})
        if "secretKeyRef" in ref:
            used.append(("Secret", ref["secretKeyRef"]["name"]))
            key = ref["secretKeyRef"]["key"]
            secret = docs.get(("Secret", ref["secretKeyRef"]["name"]), {})
            check(key in {**secret.get("data", {}), **secret.get("stringData", {})},
                  f"{where}: Secret {ref['secretKeyRef']['name']} has the key {key} that {e['name']} reads")
        if "configMapKeyRef" in ref:
            used.append(("ConfigMap", ref["configMapKeyRef"]["name"]))
    for kind, name in used:
        check((kind, name) in docs, f"{where}: the {kind} {name} the pod uses is in the set")
    return pod, container


def selects(selector, labels):
    """Whether a Kubernetes label selector selects these labels."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def selects_all(selector):
    return not (selector or {}).get("matchLabels") and not (selector or {}).get("matchExpressions")


def workloads(docs):
    """(kind, name, pod labels, pod spec) of every Deployment and StatefulSet."""
    return [(kind, name, doc["spec"]["template"]["metadata"].get("labels", {}), doc["spec"]["template"]["spec"])
            for (kind, name), doc in docs.items() if kind in ("Deployment", "StatefulSet")]


def rule_ports(rule, pod):
    """The ports a rule lets through, as numbers (named ports resolved in the
    pod); None for all ports."""
    if not rule.get("ports"):
        return None
    named = {p.get("name"): p["containerPort"] for c in pod["containers"] for p in c.get("ports", [])}
    return {named.get(p.get("port"), p.get("port")) for p in rule["ports"]}


def open_peer(peer):
    """A peer of a rule that is any address: an ipBlock of 0.0.0.0/0 or ::/0."""
    cidr = peer.get("ipBlock", {}).get("cidr")
    return cidr in ("0.0.0.0/0", "::/0")


def chosen_pods(peer):
    """A peer naming pods by label: a pod or namespace selector, none of them
    empty (an empty one is every pod, or every namespace)."""
    selectors = [peer[k] for k in ("podSelector", "namespaceSelector") if k in peer]
    return bool(selectors) and "ipBlock" not in peer and not any(selects_all(x) for x in selectors)


def network_policies(docs, where, database):
    """Default-deny both ways, then each component's needs only."""
    policies = [doc for (kind, _), doc in docs.items() if kind == "NetworkPolicy"]
    deny = [p for p in policies
            if selects_all(p["spec"].get("podSelector"))
            and {"Ingress", "Egress"} <= set(p["spec"].get("policyTypes", []))
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    check(bool(deny), f"{where}: a NetworkPolicy denies every pod all ingress and egress (default-deny)")

    def policies_for(labels, direction):
        return [p for p in policies if selects(p["spec"].get("podSelector"), labels)
                and direction in p["spec"].get("policyTypes", ["Ingress"] + (["Egress"] if p["spec"].get("egress") else []))]

    for kind, name, labels, pod in workloads(docs):
        allowing = [p for p in policies if selects(p["spec"].get("podSelector"), labels)
                    and (p["spec"].get("ingress") or p["spec"].get("egress"))]
        check(bool(allowing), f"{where}: {kind} {name}'s pods are selected by a NetworkPolicy that allows them something")

    broker = docs[("Deployment", "semel")]
    blabels = broker["spec"]["template"]["metadata"]["labels"]
    bpod = broker["spec"]["template"]["spec"]
    # Metrics: only from chosen pods.
    metrics = {p["containerPort"] for c in bpod["containers"] for p in c.get("ports", []) if p.get("name") == "metrics"}
    rules = [r for p in policies_for(blabels, "Ingress") for r in p["spec"].get("ingress", [])]
    metric_rules = [r for r in rules if rule_ports(r, bpod) is None or rule_ports(r, bpod) & metrics]
    check(bool(metrics) and bool(metric_rules) and all(
        r.get("from") and all(chosen_pods(peer) for peer in r["from"])
        for r in metric_rules),
        f"{where}: the metrics port is let in only from chosen pods (non-empty namespace or pod selectors), by no rule open to all")
    # Egress: DNS, the database, nothing open to everywhere.
    egress = [r for p in policies_for(blabels, "Egress") for r in p["spec"].get("egress", [])]
    check(all(r.get("to") and not any(open_peer(peer) for peer in r["to"]) for r in egress),
          f"{where}: no egress rule of the brokers is open to every address")
    check(any(rule_ports(r, bpod) and 53 in rule_ports(r, bpod) for r in egress), f"{where}: the brokers may ask DNS")
    if database:
        dkind, dname, dlabels, dpod = database
        check(any(rule_ports(r, bpod) == {5432} and any("podSelector" in peer and selects(peer["podSelector"], dlabels)
                                                       and "namespaceSelector" not in peer for peer in r.get("to", []))
                  for r in egress),
              f"{where}: the brokers may reach the database's pods on 5432")
        drules = [r for p in policies_for(dlabels, "Ingress") for r in p["spec"].get("ingress", [])]
        check(bool(drules) and all(
            rule_ports(r, dpod) == {5432} and r.get("from") and all(
                set(peer) == {"podSelector"} and chosen_pods(peer) and selects(peer["podSelector"], blabels)
                for peer in r["from"])
            for r in drules),
            f"{where}: the {dkind} {dname} accepts only broker pods of its namespace, only on 5432")

    # Services: the metrics port is in no Service open to the outside, nor
    # in the main one.
    for (kind, name), doc in docs.items():
        if kind != "Service":
            continue
        ports = doc["spec"].get("ports", [])
        exposes = any(p.get("targetPort") in ("metrics", *metrics) or p.get("port") in metrics
                      or p.get("name") == "metrics" for p in ports)
        if name == "semel":
            check(not exposes, f"{where}: the main Service semel does not publish the metrics port")
        elif exposes:
            check(doc["spec"].get("type", "ClusterIP") not in ("LoadBalancer", "NodePort"),
                  f"{where}: the Service {name} publishing the metrics port is neither LoadBalancer nor NodePort")


def containers(docs, where):
    """Images pinned to a release, resources bounded, ephemeral storage included."""
    for kind, name, _, pod in workloads(docs):
        for c in pod.get("initContainers", []) + pod["containers"]:
            what = f"{where}: {kind} {name}, container {c['name']}"
            image = c.get("image", "")
            tagged = "@sha256:" in image or ":" in image.rsplit("/", 1)[-1]
            check(tagged and not image.split("@")[0].endswith(":latest"),
                  f"{what}: the image ({image}) has a tag or digest, not latest")
            resources = c.get("resources", {})
            for bound in ("requests", "limits"):
                missing = [r for r in ("memory", "ephemeral-storage") if r not in resources.get(bound, {})]
                check(not missing, f"{what}: resources {bound} of memory and ephemeral-storage" +
                      (f" (missing {', '.join(missing)})" if missing else ""))


def configmap_toml(docs):
    return docs[("ConfigMap", "semel-config")]["data"]["semel.toml"]


def kubernetes():
    """deploy/kubernetes: one broker on the embedded store."""
    where = "deploy/kubernetes"
    docs = manifests(K8S)
    kinds = {kind for kind, _ in docs}
    for kind in ["Deployment", "Service", "ConfigMap", "Secret", "PersistentVolumeClaim"]:
        check(kind in kinds, f"{where}: a {kind} is in the kit")
    pod, container = broker_pod(docs, where)
    command = container.get("livenessProbe", {}).get("exec", {}).get("command", [])
    check(command[:2] == ["semel", "health"], f"{where}: livenessProbe asks grpc.health.v1 with `semel health`")
    check(docs[("Deployment", "semel")]["spec"]["strategy"]["type"] == "Recreate",
          f"{where}: one writer: the Deployment is replaced, not rolled")
    network_policies(docs, where, None)
    containers(docs, where)
    return configmap_toml(docs)


def kubernetes_postgresql():
    """deploy/kubernetes/postgresql: N brokers on one PostgreSQL database."""
    where = "deploy/kubernetes/postgresql"
    docs = manifests(K8S_POSTGRESQL)
    kinds = {kind for kind, _ in docs}
    for kind in ["Deployment", "Service", "ConfigMap", "Secret", "PodDisruptionBudget"]:
        check(kind in kinds, f"{where}: a {kind} is in the kit")
    check("PersistentVolumeClaim" not in kinds, f"{where}: no PersistentVolumeClaim for the brokers")
    deployment = docs[("Deployment", "semel")]
    pod, container = broker_pod(docs, where)
    check(deployment["spec"]["replicas"] >= 2, f"{where}: several replicas")
    check(deployment["spec"]["strategy"]["type"] == "RollingUpdate", f"{where}: replicas are replaced one at a time")
    check(not any("persistentVolumeClaim" in v for v in pod.get("volumes", [])),
          f"{where}: the broker pod has no persistent volume (no audit log of its own)")
    # Liveness must not restart brokers during a database failover, which
    # they ride out NOT_SERVING.
    liveness = container.get("livenessProbe", {})
    check("tcpSocket" in liveness, f"{where}: livenessProbe only asks whether the broker listens")
    env = {e["name"]: e for e in container.get("env", [])}
    check("secretKeyRef" in env.get("SEMEL_STORE__URL", {}).get("valueFrom", {}),
          f"{where}: the database URL (with its password) comes from a Secret (SEMEL_STORE__URL)")
    toml = tomllib.loads(configmap_toml(docs))
    check(str(toml.get("store", {}).get("url", "")).startswith("postgresql://"),
          f"{where}: the ConfigMap's semel.toml has a [store] url")
    key = toml.get("audit", {}).get("signing_key", "")
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mount = mounts.get(os.path.dirname(key))
    check(mount is not None and "secret" in volumes.get(mount, {}),
          f"{where}: the audit signing key ({key}) is mounted from a Secret, the same for every replica")
    # The trial database: marked for trying, synchronous_commit on.
    for (kind, name), doc in docs.items():
        if doc["metadata"].get("labels", {}).get("app.kubernetes.io/name") == "semel-postgresql":
            check(doc["metadata"]["labels"].get("app.kubernetes.io/component") == "for-trying-only",
                  f"{where}: {kind} {name} is marked for trying only")
    database = docs.get(("StatefulSet", "semel-postgresql"))
    if database:
        args = database["spec"]["template"]["spec"]["containers"][0].get("args", [])
        check("synchronous_commit=on" in args, f"{where}: the trial database runs with synchronous_commit=on")
    databases = [w for w in workloads(docs) if w[1] == "semel-postgresql"]
    check(bool(databases), f"{where}: the trial database is in the set (its network policy is checked)")
    network_policies(docs, where, databases[0] if databases else None)
    containers(docs, where)
    return configmap_toml(docs)


def compose_file(schema, name):
    path = os.path.join(COMPOSE, name)
    with open(path) as f:
        doc = yaml.safe_load(f)
    try:
        jsonschema.validate(doc, schema)
        check(True, f"{name} follows the Compose specification")
    except jsonschema.ValidationError as e:
        check(False, f"{name}: {e.message} at {'.'.join(map(str, e.path))}")
    for service, spec in doc["services"].items():
        image = str(spec.get("image", ""))
        if image:
            check(":" in image.rsplit("/", 1)[-1] and not image.split("@")[0].endswith(":latest"),
                  f"{name}: {service}'s image ({image}) has a tag or digest, not latest")
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("."):
                check(os.path.exists(os.path.join(COMPOSE, source)), f"{name}: {service} mounts {source}, which exists")
    return doc


def volume_mounts(spec):
    """(source, target) of a compose service's volumes."""
    mounts = []
    for volume in spec.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            mounts.append((parts[0], parts[1] if len(parts) > 1 else parts[0]))
        else:
            mounts.append((volume.get("source", ""), volume["target"]))
    return mounts


FORBIDDEN_KEYS = ("ca.key", "issuer.key")


def broker_keys(name, doc, semel):
    """No broker (`semel serve`) mounts ca.key or issuer.key: bind mounts by
    name; named volumes by running the one-shot services that fill them."""
    services = doc["services"]
    brokers = {s: spec for s, spec in services.items() if spec.get("command", [None])[0] == "serve"}
    if not brokers:
        print(f"skip: {name}: no broker service (`semel serve`) to check for CA or issuer keys")
        return
    named = set(doc.get("volumes", {}) or {})
    for service, spec in brokers.items():
        for source, _ in volume_mounts(spec):
            if source in named:
                continue
            path = os.path.join(COMPOSE, source)
            found = [f for f in ([os.path.basename(source)] if not os.path.isdir(path)
                                 else [f for _, _, fs in os.walk(path) for f in fs]) if f in FORBIDDEN_KEYS]
            check(not found, f"{name}: {service} mounts no ca.key or issuer.key from {source}")
    # The named volumes the brokers mount, and the one-shot services (a
    # shell script) that write into them: run those, each volume a
    # temporary directory, with the semel binary on PATH.
    shared = {source for spec in brokers.values() for source, _ in volume_mounts(spec) if source in named}
    one_shots = {s: spec for s, spec in services.items() if s not in brokers
                 and str(spec.get("restart", "")) == "no" and spec.get("entrypoint", [None])[0] == "/bin/sh"}
    if not any(source in shared for spec in one_shots.values() for source, _ in volume_mounts(spec)):
        check(False, f"{name}: the brokers' named volumes are filled by a one-shot service this check can run")
        return
    if shutil.which("openssl") is None:
        print(f"skip: {name}: openssl is not installed here: the one-shot services are not run")
        return
    with tempfile.TemporaryDirectory() as tmp:
        bin_dir = os.path.join(tmp, "bin")
        os.makedirs(bin_dir)
        os.symlink(semel, os.path.join(bin_dir, "semel"))
        volumes = {v: os.path.join(tmp, "volumes", v) for v in named}
        for path in volumes.values():
            os.makedirs(path)
        for _ in range(2):
            for service, spec in one_shots.items():
                mounts = sorted(volume_mounts(spec), key=lambda m: -len(m[1]))
                script = spec["command"][0] if isinstance(spec["command"], list) else spec["command"]
                for source, target in mounts:
                    real = volumes.get(source, os.path.join(COMPOSE, source))
                    script = re.sub(re.escape(target) + r'(?=/|\s|$|")', real, script, flags=re.M)
                cwd = spec.get("working_dir", "/")
                for source, target in mounts:
                    if cwd == target or cwd.startswith(target + "/"):
                        cwd = volumes.get(source, "") + cwd[len(target):]
                if not os.path.isdir(cwd):
                    cwd = tmp
                env = {"PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "HOME": tmp}
                result = subprocess.run(["/bin/sh", "-ec", script], cwd=cwd, env=env, capture_output=True, text=True)
                if result.returncode:
                    check(False, f"{name}: the one-shot service {service} runs: {result.stderr.strip()}")
                    return
        check(True, f"{name}: the one-shot services ({', '.join(one_shots)}) ran twice")
        for source in sorted(shared):
            written = any(source in dict(volume_mounts(spec)) for spec in one_shots.values())
            if written:
                files = sorted(f for _, _, fs in os.walk(volumes[source]) for f in fs)
                check(bool(files), f"{name}: the brokers' volume {source} holds {', '.join(files) or 'nothing'}")
        for service, spec in brokers.items():
            for source, target in volume_mounts(spec):
                if source in volumes:
                    found = sorted(f for _, _, fs in os.walk(volumes[source]) for f in fs if f in FORBIDDEN_KEYS)
                    check(not found, f"{name}: {service} mounts no ca.key or issuer.key through the volume {source} ({target})" +
                          (f": it holds {', '.join(found)}" if found else ""))


def compose(schema_path, semel_binary):
    """The compose files; returns the broker configurations they mount, by name."""
    with open(schema_path) as f:
        schema = json.load(f)
    doc = compose_file(schema, "docker-compose.yml")
    broker_keys("docker-compose.yml", doc, semel_binary)
    semel = doc["services"]["semel"]
    check(semel.get("cap_drop") == ["ALL"] and semel.get("read_only") is True, "the compose service is locked down")
    check(semel["command"][0] == "demo", "compose runs the broker with the demo sources")

    name = "docker-compose.postgresql.yml"
    doc = compose_file(schema, name)
    broker_keys(name, doc, semel_binary)
    services = doc["services"]
    database = [s for s, spec in services.items() if str(spec.get("image", "")).startswith("postgres:15")]
    check(len(database) == 1, f"{name}: one PostgreSQL 15 service")
    configs = {}
    if database:
        db = services[database[0]]
        check("healthcheck" in db, f"{name}: the database has a health check")
        check(any(str(v).split(":")[0] in doc.get("volumes", {}) for v in db.get("volumes", [])),
              f"{name}: the database is on a named volume")
        check("synchronous_commit=on" in db.get("command", []), f"{name}: the database runs with synchronous_commit=on")
    brokers = {s: spec for s, spec in services.items() if spec.get("command", [None])[0] == "serve"}
    check(len(brokers) == 2, f"{name}: two brokers")
    ports = []
    for service, spec in brokers.items():
        check(spec.get("cap_drop") == ["ALL"] and spec.get("read_only") is True, f"{name}: {service} is locked down")
        condition = spec.get("depends_on", {}).get(database[0] if database else "", {}).get("condition")
        check(condition == "service_healthy", f"{name}: {service} starts once the database is healthy")
        check(str(spec.get("environment", {}).get("SEMEL_STORE__URL", "")).startswith("postgresql://"),
              f"{name}: {service} is given the database URL (SEMEL_STORE__URL)")
        ports += [p.rsplit(":", 1)[0] for p in spec.get("ports", [])]
        for volume in spec.get("volumes", []):
            source, target = volume.split(":")[:2]
            if target == "/etc/semel/semel.toml":
                configs[f"deploy/compose/{source.removeprefix('./')}"] = os.path.join(COMPOSE, source)
    check(len(ports) == len(set(ports)), f"{name}: each broker has its own ports")
    for path in configs.values():
        with open(path, "rb") as f:
            toml = tomllib.load(f)
        check(str(toml.get("store", {}).get("url", "")).startswith("postgresql://"),
              f"{name}: {os.path.basename(path)} has a [store] url")
    return {label: open(path).read() for label, path in configs.items()}


def haproxy():
    path = os.path.join(COMPOSE, "haproxy.cfg")
    text = open(path).read()
    check(re.search(r"^\s*mode\s+tcp\b", text, re.M) is not None and "mode http" not in text,
          "haproxy.cfg balances TCP (mutual TLS ends at the broker)")
    if shutil.which("haproxy") is None:
        print("skip: haproxy is not installed here (haproxy -c)")
        return
    result = subprocess.run(["haproxy", "-c", "-f", path], capture_output=True, text=True)
    check(result.returncode == 0, "haproxy -c accepts deploy/compose/haproxy.cfg" +
          (":\n" + result.stdout + result.stderr if result.returncode else ""))


def dockerfile(hadolint):
    path = os.path.join(ROOT, "deploy", "Dockerfile")
    text = open(path).read()
    stages = re.findall(r"^FROM\s", text, re.M)
    check(len(stages) >= 2, "the Dockerfile is multi-stage")
    users = re.findall(r"^USER\s+(\S+)", text.split("AS runtime", 1)[-1], re.M)
    check(bool(users) and users[-1].split(":")[0] not in ("0", "root"), "the image runs as a non-root user")
    check("HEALTHCHECK" in text, "the image has a health check")
    defaults = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    for image in re.findall(r"^FROM\s+(\S+)", text, re.M):
        resolved = re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), ""), image)
        check(bool(re.search(r":[\w.-]+$|@sha256:[0-9a-f]{64}$", resolved)) and not resolved.split("@")[0].endswith(":latest"),
              f"the Dockerfile's base image {image} ({resolved}) has a tag or digest, not latest")
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning", path], capture_output=True, text=True)
    check(result.returncode == 0, "hadolint finds nothing at warning level" + (":\n" + result.stdout if result.stdout else ""))


def systemd():
    """The unit's IP firewall and resource bounds (systemd-analyze verify and
    security run in .ci/deploy-check where installed)."""
    path = os.path.join(ROOT, "deploy", "systemd", "semel.service")
    settings = {}
    section = None
    for line in open(path):
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith(("#", ";")) and "=" in line and section == "Service":
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    where = "deploy/systemd/semel.service"
    check(settings.get("IPAddressDeny", [""])[-1] == "any", f"{where}: IPAddressDeny=any (an IP allow list)")
    check(bool([v for v in settings.get("IPAddressAllow", []) if v]), f"{where}: IPAddressAllow= names what is allowed")
    for key in ("MemoryMax", "TasksMax"):
        value = settings.get(key, [""])[-1]
        check(value not in ("", "infinity"), f"{where}: {key}= bounds the service" + (f" ({value})" if value else ""))


def configurations(semel, configs):
    with tempfile.TemporaryDirectory() as tmp:
        pki = os.path.join(tmp, "pki")
        subprocess.run([semel, "pki", "issue", "--dir", pki, "--kbo", "0087654346", "--name", "Broker", "--stem", "broker"],
                       check=True, capture_output=True)
        subprocess.run([semel, "pki", "issuer", "--dir", pki], check=True, capture_output=True)
        files = {
            "broker.crt": os.path.join(pki, "broker.crt"),
            "broker.key": os.path.join(pki, "broker.key"),
            "clients-ca.crt": os.path.join(pki, "ca.crt"),
            "ca.crt": os.path.join(pki, "ca.crt"),
            "cpas-anderlecht.jwks.json": os.path.join(pki, "issuer.jwks.json"),
            "issuer.jwks.json": os.path.join(pki, "issuer.jwks.json"),
        }
        # The shared signing key, made as the operator guide says.
        if shutil.which("openssl"):
            key = os.path.join(pki, "audit-signing.key")
            subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", key], check=True, capture_output=True)
            files["audit-signing.key"] = key
        else:
            print("skip: openssl is not installed here: the signing keys the configurations name are left absent")
        for name, text in configs.items():
            for base, real in files.items():
                text = re.sub(r'"/etc/semel/[^"]*/' + re.escape(base) + '"', json.dumps(real), text)
            text = text.replace('"/var/lib/semel"', json.dumps(os.path.join(tmp, "data")))
            path = os.path.join(tmp, "semel.toml")
            with open(path, "w") as f:
                f.write(text)
            result = subprocess.run([semel, "serve", "--config", path, "--check-config"], capture_output=True, text=True)
            check(result.returncode == 0, f"{name} passes `semel serve --check-config`" + (": " + result.stderr.strip() if result.returncode else ""))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--semel", required=True)
    parser.add_argument("--compose-schema", required=True)
    parser.add_argument("--hadolint", required=True)
    args = parser.parse_args()
    configs = {"deploy/semel.example.toml": open(os.path.join(ROOT, "deploy", "semel.example.toml")).read()}
    configs["deploy/kubernetes: the ConfigMap's semel.toml"] = kubernetes()
    configs["deploy/kubernetes/postgresql: the ConfigMap's semel.toml"] = kubernetes_postgresql()
    configs.update(compose(args.compose_schema, os.path.abspath(args.semel)))
    haproxy()
    systemd()
    dockerfile(args.hadolint)
    configurations(os.path.abspath(args.semel), configs)
    print(f"deployment kit: {len(failures)} problem(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
