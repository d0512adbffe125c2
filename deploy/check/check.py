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
- docker-compose files: validated against the Compose specification's
  schema; the PostgreSQL one has a database with a health check, a volume
  and synchronous_commit on, and two brokers on it with their own ports.
- haproxy.cfg: balances TCP; `haproxy -c` where HAProxy is installed.
- Dockerfile: multi-stage, ends as a non-root user, has a HEALTHCHECK.
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
        for volume in spec.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("."):
                check(os.path.exists(os.path.join(COMPOSE, source)), f"{name}: {service} mounts {source}, which exists")
    return doc


def compose(schema_path):
    """The compose files; returns the broker configurations they mount, by name."""
    with open(schema_path) as f:
        schema = json.load(f)
    doc = compose_file(schema, "docker-compose.yml")
    semel = doc["services"]["semel"]
    check(semel.get("cap_drop") == ["ALL"] and semel.get("read_only") is True, "the compose service is locked down")
    check(semel["command"][0] == "demo", "compose runs the broker with the demo sources")

    name = "docker-compose.postgresql.yml"
    doc = compose_file(schema, name)
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
    result = subprocess.run([hadolint, "--no-color", "--failure-threshold", "warning", path], capture_output=True, text=True)
    check(result.returncode == 0, "hadolint finds nothing at warning level" + (":\n" + result.stdout if result.stdout else ""))


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
    configs.update(compose(args.compose_schema))
    haproxy()
    dockerfile(args.hadolint)
    configurations(os.path.abspath(args.semel), configs)
    print(f"deployment kit: {len(failures)} problem(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
