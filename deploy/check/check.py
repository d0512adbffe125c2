"""Checks the deployment kit as far as a machine without Docker or Kubernetes
allows. Run by .ci/deploy-check, which installs the tools first.

- Kubernetes manifests: validated against the Kubernetes API schemas
  (kubernetes-validate, strict: unknown fields are errors), and the pod must
  run as non-root with a read-only root filesystem and every capability
  dropped, with probes on grpc.health.v1 through `semel health`.
- docker-compose file: validated against the Compose specification's schema.
- Dockerfile: multi-stage, ends as a non-root user, has a HEALTHCHECK.
- Every Semel configuration in the kit (deploy/semel.example.toml and the
  ConfigMap's semel.toml) passes `semel serve --check-config`, with
  development certificates and keys put where it expects them.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
K8S = os.path.join(ROOT, "deploy", "kubernetes")
K8S_VERSION = "1.31"
failures = []


def check(condition, what):
    print(("ok: " if condition else "FAIL: ") + what)
    if not condition:
        failures.append(what)


def kubernetes():
    docs = {}
    for name in sorted(os.listdir(K8S)):
        if not name.endswith(".yaml") or name == "kustomization.yaml":
            continue
        with open(os.path.join(K8S, name)) as f:
            for doc in yaml.safe_load_all(f):
                try:
                    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
                    check(True, f"{name}: valid {doc['kind']} for Kubernetes {K8S_VERSION}")
                except kubernetes_validate.ValidationError as e:
                    check(False, f"{name}: {e.message} at {'.'.join(map(str, e.path))}")
                docs[doc["kind"]] = doc
    with open(os.path.join(K8S, "kustomization.yaml")) as f:
        listed = yaml.safe_load(f)["resources"]
    check(sorted(listed) == sorted(n for n in os.listdir(K8S) if n.endswith(".yaml") and n != "kustomization.yaml"),
          "kustomization.yaml lists every manifest")
    for kind in ["Deployment", "Service", "ConfigMap", "Secret", "PersistentVolumeClaim"]:
        check(kind in docs, f"a {kind} is in the kit")
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    check(pod["securityContext"].get("runAsNonRoot") is True, "the pod runs as non-root")
    check(container["securityContext"].get("readOnlyRootFilesystem") is True, "the root filesystem is read-only")
    check(container["securityContext"]["capabilities"]["drop"] == ["ALL"], "every capability is dropped")
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"]:
        command = container.get(probe, {}).get("exec", {}).get("command", [])
        check(command[:2] == ["semel", "health"], f"{probe} asks grpc.health.v1 with `semel health`")
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    check(bool(env.get("SEMEL_SERVER_NAME")), "the probes know the certificate's DNS name (SEMEL_SERVER_NAME)")
    check(docs["Deployment"]["spec"]["strategy"]["type"] == "Recreate", "one writer: the Deployment is replaced, not rolled")
    return docs["ConfigMap"]["data"]["semel.toml"]


def compose(schema_path):
    with open(schema_path) as f:
        schema = json.load(f)
    path = os.path.join(ROOT, "deploy", "compose", "docker-compose.yml")
    with open(path) as f:
        doc = yaml.safe_load(f)
    try:
        jsonschema.validate(doc, schema)
        check(True, "docker-compose.yml follows the Compose specification")
    except jsonschema.ValidationError as e:
        check(False, f"docker-compose.yml: {e.message}")
    semel = doc["services"]["semel"]
    check(semel.get("cap_drop") == ["ALL"] and semel.get("read_only") is True, "the compose service is locked down")
    check(semel["command"][0] == "demo", "compose runs the broker with the demo sources")


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


def configurations(semel, configmap_toml):
    with tempfile.TemporaryDirectory() as tmp:
        pki = os.path.join(tmp, "pki")
        subprocess.run([semel, "pki", "issue", "--dir", pki, "--kbo", "0087654346", "--name", "Broker", "--stem", "broker"],
                       check=True, capture_output=True)
        subprocess.run([semel, "pki", "issuer", "--dir", pki], check=True, capture_output=True)
        files = {
            "broker.crt": os.path.join(pki, "broker.crt"),
            "broker.key": os.path.join(pki, "broker.key"),
            "clients-ca.crt": os.path.join(pki, "ca.crt"),
            "cpas-anderlecht.jwks.json": os.path.join(pki, "issuer.jwks.json"),
        }
        example = open(os.path.join(ROOT, "deploy", "semel.example.toml")).read()
        for name, text in [("deploy/semel.example.toml", example), ("the ConfigMap's semel.toml", configmap_toml)]:
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
    configmap_toml = kubernetes()
    compose(args.compose_schema)
    dockerfile(args.hadolint)
    configurations(os.path.abspath(args.semel), configmap_toml)
    print(f"deployment kit: {len(failures)} problem(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
