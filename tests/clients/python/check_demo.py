"""Checks a running demo from Python: an allowed lookup returns exactly the
asked fields, a refusal carries its ErrorInfo reason, and a call without a
person's token is unauthenticated. Run by .ci/run."""

import sys

import grpc

import semel_lookup as client


def refused(call, code, reason):
    """Asserts that `call` fails with this gRPC code and ErrorInfo reason;
    returns the ErrorInfo metadata."""
    try:
        call()
    except grpc.RpcError as e:
        got, metadata = client.error_info(e)
        assert e.code() == code, e.code()
        assert got == reason, got
        return metadata
    sys.exit(f"expected {code} / {reason}, but the call was answered")


def main(data_dir):
    pb, pb_grpc = client.generate()
    stub = pb_grpc.LookupServiceStub(client.channel(data_dir, "cpas-anderlecht"))
    answer = client.lookup(stub, pb, "93.05.18-223.61", "national_register.residence", ["street", "nis_code"], "RIS_ELIGIBILITY")
    assert answer["authorisation_reference"] == "BSC/2024/017", answer
    assert sorted(answer["fields"]) == ["nis_code", "street"], answer
    assert answer["fields"]["nis_code"] == "21001", answer
    metadata = refused(lambda: client.lookup(stub, pb, "93051822361", "national_register.residence", ["street"],
                                             "SCHOOL_ENROLMENT"),
                       grpc.StatusCode.PERMISSION_DENIED, "PURPOSE_NOT_ALLOWED")
    assert metadata.get("request_id"), metadata
    anonymous = pb_grpc.LookupServiceStub(client.channel(data_dir, "cpas-anderlecht", with_token=False))
    refused(lambda: client.lookup(anonymous, pb, "93051822361", "national_register.residence", ["street"],
                                  "RIS_ELIGIBILITY"),
            grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
    print("python client: 3 passed, 0 failed")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "semel-data")
