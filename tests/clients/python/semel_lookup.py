"""A Semel lookup from Python, with the official grpcio and mutual TLS.

Generates the client code from proto/ at start (grpcio-tools ships protoc),
reads the demo's demo.json for the broker's address, the certificate of the
organisation it acts as and the token of a person there, and performs one
lookup.

    python semel_lookup.py --data-dir semel-data --as cpas-anderlecht \
        --citizen 93.05.18-223.61 --dataset national_register.residence \
        --fields street,municipality --purpose RIS_ELIGIBILITY
"""

import argparse
import json
import os
import sys
import tempfile

import grpc
from grpc_status import rpc_status
from google.rpc import error_details_pb2
from grpc_tools import protoc

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO = os.path.normpath(os.path.join(HERE, "..", "..", "..", "proto"))


def generate():
    """Compiles semel.v1 into a temporary package and imports it."""
    out = tempfile.mkdtemp(prefix="semel-py-")
    files = [os.path.join("semel", "v1", f) for f in sorted(os.listdir(os.path.join(PROTO, "semel", "v1")))]
    code = protoc.main(["protoc", f"-I{PROTO}", f"-I{os.path.join(os.path.dirname(protoc.__file__), '_proto')}",
                        f"--python_out={out}", f"--grpc_python_out={out}", *files])
    if code != 0:
        sys.exit(f"generate the client code from {PROTO}: protoc exited {code}")
    sys.path.insert(0, out)
    from semel.v1 import lookup_pb2, lookup_pb2_grpc  # noqa: E402
    return lookup_pb2, lookup_pb2_grpc


def module(name):
    """Another generated module of semel.v1 (after `generate()`), e.g.
    "source_pb2_grpc"."""
    import importlib
    return importlib.import_module(f"semel.v1.{name}")


def channel(data_dir, who, with_token=True):
    """A mutual-TLS channel to the demo broker, as a person of the demo
    organisation `who`: the organisation's certificate identifies the
    administration, the token the demo wrote (sent as `authorization: Bearer`
    on every call) identifies the person."""
    with open(os.path.join(data_dir, "demo.json")) as f:
        demo = json.load(f)
    org = next((o for o in demo["organisations"] if who in (o["slug"], o["kbo"])), None)
    if org is None:
        sys.exit(f"no demo organisation {who}")
    read = lambda p: open(p, "rb").read()  # noqa: E731
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(demo["ca"]), private_key=read(org["key"]), certificate_chain=read(org["cert"]))
    if with_token:
        token = read(org["token"]).decode().strip()
        credentials = grpc.composite_channel_credentials(credentials, grpc.access_token_call_credentials(token))
    return grpc.secure_channel(demo["broker"].removeprefix("https://"), credentials)


def error_info(error):
    """The google.rpc.ErrorInfo of a failed call: (reason, metadata)."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason, dict(info.metadata)
    return None, {}


def value(v):
    """A semel.v1.Value as plain Python."""
    kind = v.WhichOneof("kind")
    if kind == "record_value":
        return {k: value(x) for k, x in v.record_value.fields.items()}
    if kind == "list_value":
        return [value(x) for x in v.list_value.values]
    return getattr(v, kind) if kind else None


def lookup(stub, pb, citizen, dataset, fields, purpose):
    answer = stub.Lookup(pb.LookupRequest(citizen=citizen, dataset=dataset, fields=fields, purpose=purpose), timeout=10)
    return {
        "request_id": answer.request_id,
        "authorisation_reference": answer.authorisation_reference,
        "fields": {k: value(v) for k, v in answer.fields.items()},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default="semel-data")
    p.add_argument("--as", dest="who", required=True)
    p.add_argument("--citizen", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--fields", required=True)
    p.add_argument("--purpose", required=True)
    a = p.parse_args()
    pb, pb_grpc = generate()
    stub = pb_grpc.LookupServiceStub(channel(a.data_dir, a.who))
    try:
        print(json.dumps(lookup(stub, pb, a.citizen, a.dataset, a.fields.split(","), a.purpose), indent=2))
    except grpc.RpcError as e:
        reason, metadata = error_info(e)
        print(f"{e.code().name} ({reason}): {e.details()} {metadata}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
