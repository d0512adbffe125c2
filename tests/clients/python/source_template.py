"""A template for an authentic source, in Python with the official grpcio:
the SourceService the broker calls once it has allowed a lookup.

What a source must do, and what this shows:
  - serve SourceService.Fetch over TLS with its own certificate (issued by a
    CA the broker trusts for sources), and require a client certificate;
  - accept calls only from the broker: its certificate's subject carries the
    operator's enterprise number as organizationIdentifier NTRBE-<KBO>
    (grpcio and OpenSSL show that attribute hex-encoded, as
    `2.5.4.97=#0c10...`, which `organisation_of` decodes);
  - answer only the fields asked (the broker drops anything else), NOT_FOUND
    for a citizen it holds nothing about, and an empty answer to a call with
    no field (the broker asking whether it knows the citizen);
  - keep its own log with the broker's request id, the consumer, the purpose
    and the authorisation it was told of (never the values it sent).

Copy it, replace RECORDS with your own data access, and run it:

    python source_template.py --cert src.crt --key src.key --ca ca.crt \\
        --broker-kbo 0876543270 --listen 127.0.0.1:7101
"""

import argparse
import sys
from concurrent import futures

import grpc

import semel_lookup as client

# The toy dataset this template publishes: library memberships, by
# national number. A real source reads its own register here.
RECORDS = {
    "93051822361": {"member_since": "2019-09-01", "loans": 3},
    "85073003328": {"member_since": "2021-02-14", "loans": 0},
}
DATASET = "python.library"


def organisation_of(subject: str):
    """The enterprise number in a certificate subject as grpcio shows it
    (`x509_subject`): organizationIdentifier (OID 2.5.4.97) is printed
    hex-encoded (`2.5.4.97=#0c10` + hex of a UTF8String), and must read
    `NTRBE-<10 digits>`."""
    for part in subject.split(","):
        key, _, val = part.strip().partition("=")
        if key not in ("2.5.4.97", "organizationIdentifier"):
            continue
        if val.startswith("#"):
            der = bytes.fromhex(val[1:])
            # tag (0x0c UTF8String or 0x13 PrintableString), short length, text
            if len(der) < 2 or der[0] not in (0x0C, 0x13) or der[1] != len(der) - 2:
                return None
            val = der[2:].decode()
        return val.removeprefix("NTRBE-") if val.startswith("NTRBE-") else None
    return None


def value(pb, v):
    """A Python value as a semel.v1.Value."""
    if isinstance(v, bool):
        return pb.Value(bool_value=v)
    if isinstance(v, int):
        return pb.Value(int_value=v)
    if isinstance(v, str) and len(v) == 10 and v[4] == "-" and v[7] == "-":
        return pb.Value(date_value=v)
    return pb.Value(string_value=str(v))


class Source:
    def __init__(self, broker_kbo, log):
        self.broker_kbo = broker_kbo
        self.log = log
        self.values = client.module("values_pb2")
        self.source = client.module("source_pb2")

    def Fetch(self, request, context):  # noqa: N802 (gRPC method name)
        subjects = context.auth_context().get("x509_subject", [b""])
        caller = organisation_of(subjects[0].decode())
        if caller != self.broker_kbo:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "this source answers the broker only")
        if request.dataset != DATASET:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"this source publishes {DATASET} only")
        record = RECORDS.get(request.citizen)
        # The source's own log: who asked, why, under which authorisation;
        # the broker's request id ties it to the broker's audit entry.
        self.log.append((request.request_id, request.consumer_kbo, request.purpose,
                         request.authorisation_reference, list(request.fields)))
        if record is None:
            context.abort(grpc.StatusCode.NOT_FOUND, "no record about this citizen")
        unknown = [f for f in request.fields if f not in record]
        if unknown:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"no field {unknown[0]}")
        return self.source.FetchResponse(fields={f: value(self.values, record[f]) for f in request.fields})


def serve(cert, key, ca, broker_kbo, listen):
    """Starts the source; returns (server, port, log)."""
    client.generate()
    source_grpc = client.module("source_pb2_grpc")
    read = lambda p: open(p, "rb").read()  # noqa: E731
    credentials = grpc.ssl_server_credentials([(read(key), read(cert))], root_certificates=read(ca),
                                              require_client_auth=True)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    log = []
    source_grpc.add_SourceServiceServicer_to_server(Source(broker_kbo, log), server)
    port = server.add_secure_port(listen, credentials)
    server.start()
    return server, port, log


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True, help="the CA of the broker's client certificate")
    p.add_argument("--broker-kbo", required=True, help="the operator's enterprise number")
    p.add_argument("--listen", default="127.0.0.1:7101")
    a = p.parse_args()
    server, port, _ = serve(a.cert, a.key, a.ca, a.broker_kbo, a.listen)
    print(f"source listening on port {port}", file=sys.stderr)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
