"""A real S3-compatible server for tests: moto in server mode on a free loopback port, run as a
subprocess of the test session and stopped by its handle."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs

# dummy credentials moto accepts; real ones never appear in tests
S3_TEST_ENV = {"AWS_ACCESS_KEY_ID": "conflux-test", "AWS_SECRET_ACCESS_KEY": "conflux-test-secret",
               "AWS_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(log: Path, port: int | None = None, *,
               check_credentials: bool = False) -> tuple[subprocess.Popen, str]:
    """``python -m moto.server`` bound to 127.0.0.1; returns the process and its endpoint URL
    once it accepts connections. ``check_credentials``: moto refuses every access key it has
    not issued (``INITIAL_NO_AUTH_ACTION_COUNT=0``), as S3 refuses unknown ones."""
    port = port or free_port()
    env = {**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if check_credentials else {}),
           # where moto's request recorder (tests/integration/test_lake_s3.py) keeps its file:
           # beside the log, not in the working directory
           "MOTO_RECORDER_FILEPATH": str(Path(log).parent / f"{Path(log).stem}.recording")}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1",
                                 "-p", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}; see {log}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    stop(proc)
    raise RuntimeError(f"moto server did not listen on 127.0.0.1:{port} within 30 s; see {log}")


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def create_bucket(endpoint: str, bucket: str) -> None:
    host = endpoint.split("://", 1)[1]
    fs = pafs.S3FileSystem(endpoint_override=host, scheme="http", allow_bucket_creation=True,
                           access_key=S3_TEST_ENV["AWS_ACCESS_KEY_ID"],
                           secret_key=S3_TEST_ENV["AWS_SECRET_ACCESS_KEY"], region="us-east-1")
    fs.create_dir(bucket)
