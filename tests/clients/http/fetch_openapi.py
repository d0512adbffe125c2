"""Fetches the OpenAPI document a demo broker's HTTP/JSON face serves, over
mutual TLS with a demo organisation's certificate (no token needed).
Usage: fetch_openapi.py DEMO_DIR OUT"""

import json
import sys

import requests

demo_dir, out = sys.argv[1], sys.argv[2]
manifest = json.load(open(f"{demo_dir}/demo.json"))
org = next(o for o in manifest["organisations"] if o["slug"] == "cpas-anderlecht")
answer = requests.get(
    manifest["http"] + "/openapi.json",
    cert=(org["cert"], org["key"]),
    verify=manifest["ca"],
    timeout=10,
)
answer.raise_for_status()
with open(out, "wb") as f:
    f.write(answer.content)
