"""A real S3 HTTP endpoint on loopback for the remote checkpoint tier's tests: moto's server mode (as
s3fs's own tests use), started and stopped by the tests, with throwaway credentials in the
environment the way a run gets its real ones (by name, `checkpoint.remote.env`)."""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret-key-value", "AWS_DEFAULT_REGION": "us-east-1"}


@dataclass(frozen=True)
class ObjectStore:
    endpoint_url: str

    def options(self) -> dict:
        return {"endpoint_url": self.endpoint_url}

    def bucket(self, name: str) -> str:
        """A new empty bucket; its URL."""
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint_url).create_bucket(Bucket=name)
        return f"s3://{name}"


@contextmanager
def object_store() -> Iterator[ObjectStore]:
    """moto's S3 on 127.0.0.1 at a free port, the credentials set in this process's environment
    (the ranks a test starts inherit them), both undone afterwards."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request in the tests' output
    saved = {name: os.environ.get(name) for name in CREDENTIALS}
    os.environ.update(CREDENTIALS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield ObjectStore(f"http://{host}:{port}")
    finally:
        server.stop()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
