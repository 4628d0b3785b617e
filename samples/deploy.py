"""Deploy every sample (function + trigger) to a running hub: ``python -m samples.deploy``.

Reads HUB_URL and HUB_API_TOKEN (and HUB_S3_* to create the sample bucket), as written to
``.hub/dev.env`` by the run command. Plain HTTP calls: what a user would do with curl.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
SAMPLES = ["s3_upload_report", "order_audit", "click_counter"]


def call(method: str, path: str, body: Any = None) -> Any:
    req = urllib.request.Request(
        os.environ["HUB_URL"].rstrip("/") + path,
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {os.environ['HUB_API_TOKEN']}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"{method} {path} failed: {exc.code} {exc.read().decode(errors='replace')}") from None


def ensure_bucket(name: str) -> None:
    endpoint = os.environ.get("HUB_S3_ENDPOINT")
    if not endpoint:
        return
    from minio import Minio

    client = Minio(endpoint.split("://", 1)[1], access_key=os.environ["HUB_S3_ACCESS_KEY"],
                   secret_key=os.environ["HUB_S3_SECRET_KEY"], secure=endpoint.startswith("https"),
                   region=os.environ.get("HUB_S3_REGION", "us-east-1"))
    if not client.bucket_exists(name):
        client.make_bucket(name)


def name_of(sample: str) -> str:
    return sample.replace("_", "-")


def deploy(sample: str) -> None:
    definition = json.loads((HERE / sample / "definition.json").read_text())
    files = {p.name: p.read_text() for p in (HERE / sample).glob("*.py")}
    fn = call("PUT", f"/v1/functions/{name_of(sample)}", {**definition["function"], "code": {"files": files}})
    trigger = definition["trigger"]
    if trigger["source"]["type"] == "s3":
        ensure_bucket(trigger["source"]["bucket"])
    call("PUT", f"/v1/triggers/{name_of(sample)}", {"function": name_of(sample), **trigger})
    print(f"deployed {name_of(sample)} (version {fn['version']}) <- {trigger['source']['type']}")


def main() -> None:
    for sample in SAMPLES:
        deploy(sample)


if __name__ == "__main__":
    sys.exit(main())
