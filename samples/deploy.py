"""Deploy every sample with the CLI, exactly as a user would: ``python -m samples.deploy``.

Each sample is a function directory (code + ``function.toml`` with its triggers) deployed by
``trigger-hub deploy DIR``; the only extra step is creating the S3 bucket a sample listens to
(with HUB_S3_* from ``.hub/dev.env``), which is the user's business, not the hub's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).parent
SAMPLES = ["s3_upload_report", "order_audit", "click_counter", "hello_http"]


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


def main() -> int:
    for sample in SAMPLES:
        manifest = tomllib.loads((HERE / sample / "function.toml").read_text())
        for trigger in manifest.get("triggers", []):
            if trigger["source"]["type"] == "s3":
                ensure_bucket(trigger["source"]["bucket"])
        done = subprocess.run([sys.executable, "-m", "hub", "deploy", str(HERE / sample)])
        if done.returncode:
            return done.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
