"""Runs the Python source template against a fresh demo, end to end: the
source registers its own dataset, the operator authorises a consumer, and a
lookup through the broker reaches the Python source and returns exactly the
asked field. Run by .ci/run; the source's certificate and token come from
`semel pki issue` and `semel token` (see .ci/run).

    python check_source.py <demo data dir> <source kbo> <cert> <key> <token file>
"""

import json
import os
import sys

import grpc

import semel_lookup as client
import source_template


def secure(demo, cert, key, token):
    read = lambda p: open(p, "rb").read()  # noqa: E731
    creds = grpc.composite_channel_credentials(
        grpc.ssl_channel_credentials(root_certificates=read(demo["ca"]), private_key=read(key),
                                     certificate_chain=read(cert)),
        grpc.access_token_call_credentials(token))
    return grpc.secure_channel(demo["broker"].removeprefix("https://"), creds)


def main(data_dir, kbo, cert, key, token_file):
    with open(os.path.join(data_dir, "demo.json")) as f:
        demo = json.load(f)
    orgs = {o["slug"]: o for o in demo["organisations"]}
    operator = orgs["operator"]
    server, port, log = source_template.serve(cert, key, demo["ca"], operator["kbo"], "127.0.0.1:0")
    registry_pb = client.module("registry_pb2")
    registry_grpc = client.module("registry_pb2_grpc")
    lookup_pb = client.module("lookup_pb2")
    lookup_grpc = client.module("lookup_pb2_grpc")
    admin = registry_grpc.RegistryServiceStub(client.channel(data_dir, "operator"))
    admin.CreateOrganisation(registry_pb.CreateOrganisationRequest(organisation=registry_pb.Organisation(
        kbo=kbo, name="Python library (source template)",
        roles=[registry_pb.ORGANISATION_ROLE_SOURCE])), timeout=10)
    # A source registers its own dataset, with its own certificate and token.
    token = open(token_file).read().strip()
    own = registry_grpc.RegistryServiceStub(secure(demo, cert, key, token))
    integer, date = registry_pb.FIELD_TYPE_INT, registry_pb.FIELD_TYPE_DATE
    own.CreateDataset(registry_pb.CreateDatasetRequest(dataset=registry_pb.Dataset(
        name=source_template.DATASET, source_kbo=kbo, description="library memberships (template)",
        fields=[registry_pb.FieldDefinition(name="member_since", description="since when", type=date),
                registry_pb.FieldDefinition(name="loans", description="books on loan", type=integer)],
        endpoint=f"https://127.0.0.1:{port}")), timeout=10)
    anderlecht = orgs["cpas-anderlecht"]
    admin.CreateAuthorisation(registry_pb.CreateAuthorisationRequest(authorisation=registry_pb.Authorisation(
        reference="TEMPLATE/2026/001", consumer_kbo=anderlecht["kbo"], dataset=source_template.DATASET,
        fields=["member_since"], purpose="RIS_ELIGIBILITY", legal_basis="template test",
        issuing_body="CI", valid_from="2020-01-01", capacities=["RIS_BENEFICIARY"])), timeout=10)
    stub = lookup_grpc.LookupServiceStub(client.channel(data_dir, "cpas-anderlecht"))
    answer = stub.Lookup(lookup_pb.LookupRequest(citizen="93051822361", dataset=source_template.DATASET,
                                                 fields=["member_since"], purpose="RIS_ELIGIBILITY"), timeout=10)
    fields = {k: client.value(v) for k, v in answer.fields.items()}
    assert fields == {"member_since": "2019-09-01"}, fields
    assert answer.source_kbo == kbo, answer.source_kbo
    assert log and log[-1][0] == answer.request_id, log
    assert log[-1][2] == "RIS_ELIGIBILITY" and log[-1][3] == "TEMPLATE/2026/001", log
    # A citizen the source does not know: a negative answer, said as such.
    try:
        stub.Lookup(lookup_pb.LookupRequest(citizen="17073003384", dataset=source_template.DATASET,
                                            fields=["member_since"], purpose="RIS_ELIGIBILITY"), timeout=10)
        sys.exit("a citizen the source does not know was answered")
    except grpc.RpcError as e:
        reason, _ = client.error_info(e)
        assert e.code() == grpc.StatusCode.NOT_FOUND and reason == "SUBJECT_NOT_FOUND", (e.code(), reason)
    # Only the broker may call the source.
    assert source_template.organisation_of("CN=x,2.5.4.97=#0c104e545242452d30383736353433323730") == "0876543270"
    server.stop(0)
    print("python source template: 4 passed, 0 failed")


if __name__ == "__main__":
    main(*sys.argv[1:6])
