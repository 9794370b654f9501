"""deploy/imagevault.service: systemd accepts it without a warning, its exposure score is low,
it sets the hardening the operations guide promises, and its credentials are settings the
daemon reads."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.deploy.tools import require_tool
from vault.config import SECRET_SETTINGS, Config, load_config

ROOT = Path(__file__).resolve().parent.parent.parent
UNIT = ROOT / "deploy" / "imagevault.service"
EXEC = "/opt/imagevault/bin/imagevault"
# What the unit must say, setting by setting (docs/operations.md, "The service unit").
REQUIRED = {
    "User": "imagevault", "Group": "imagevault",
    "ProtectSystem": "strict", "ProtectHome": "yes", "NoNewPrivileges": "yes", "PrivateTmp": "yes",
    "PrivateDevices": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "",
    "ReadWritePaths": "/var/lib/imagevault", "StateDirectory": "imagevault", "UMask": "0077",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "RestartPreventExitStatus": "78",
}
_LINE = re.compile(r"^([A-Za-z]+)=(.*)$")


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A strict reading of the unit: [Section] headers and Key=Value lines only (comments and
    blank lines aside), no continuation lines, every key in a section; values per key in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith(("#", ";")):
            continue
        if re.fullmatch(r"\[[A-Za-z]+\]", line):
            current = sections.setdefault(line[1:-1], {})
            continue
        match = _LINE.match(line)
        assert match and current is not None and not line.endswith("\\"), f"line {number}: {line!r}"
        current.setdefault(match.group(1), []).append(match.group(2))
    return sections


UNITS = sorted(p for p in (ROOT / "deploy").iterdir() if p.suffix in (".service", ".timer"))


def runnable_copy(tmp_path: Path, unit: Path = UNIT) -> Path:
    """The unit with ExecStart pointing at an executable that exists here (verify checks it)."""
    text = unit.read_text()
    assert unit.suffix != ".service" or f"ExecStart={EXEC} " in text
    copy = tmp_path / unit.name
    copy.write_text(text.replace(EXEC, sys.executable))
    return copy


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify_accepts_the_unit_without_a_warning(tmp_path, unit):
    analyze = require_tool("systemd-analyze", "systemd")
    copies = [runnable_copy(tmp_path, u) for u in UNITS]  # a timer's service must be beside it
    result = subprocess.run([analyze, "verify", str(tmp_path / unit.name)], capture_output=True, text=True,
                            check=False)
    assert copies
    # Unknown keys and bad values are warnings with exit status 0: any line naming a unit fails.
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if any(u.name in line for u in UNITS)]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_systemd_analyze_verify_would_catch_a_mistake(tmp_path):
    analyze = require_tool("systemd-analyze", "systemd")
    copy = runnable_copy(tmp_path)
    copy.write_text(copy.read_text().replace("ProtectHome=yes", "ProtectHome=perhaps"))
    result = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, check=False)
    assert "ProtectHome" in result.stdout + result.stderr or "protect home" in result.stderr.lower()


@pytest.mark.parametrize("unit", [u for u in UNITS if u.suffix == ".service"], ids=lambda p: p.name)
def test_exposure_score_is_low(tmp_path, unit):
    analyze = require_tool("systemd-analyze", "systemd")
    copy = runnable_copy(tmp_path, unit)
    result = subprocess.run([analyze, "security", "--offline=true", "--threshold=20", str(copy)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    score = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert score and float(score.group(1)) <= 2.0, result.stdout[-500:]


def test_unit_sets_the_required_hardening():
    service = parse_unit(UNIT.read_text())["Service"]
    for key, value in REQUIRED.items():
        assert service.get(key) == [value], f"{key}={service.get(key)}"
    assert "@system-service" in service["SystemCallFilter"]
    assert not any(line.startswith(("IMAGEVAULT_KEYRING_PASSPHRASE=", "IMAGEVAULT_VAULT_TOKEN=",
                                    "IMAGEVAULT_VAULT_SECRET_ID=", "IMAGEVAULT_S3_SECRET_KEY="))
                   for line in service.get("Environment", []))
    # Enough descriptors for max_connections plus the daemon's own (vault/api/app.py).
    assert int(service["LimitNOFILE"][0]) >= Config().max_connections + 1024


def test_credentials_are_secret_file_settings_the_daemon_loads(tmp_path):
    """Every LoadCredential= (commented examples too) is named by an IMAGEVAULT_* variable in
    %d, the credentials directory; with the files there, the configuration holds the secrets."""
    lines = [line.lstrip("#") for line in UNIT.read_text().splitlines()]
    unit = parse_unit("\n".join(line for line in lines if not line.startswith((" ", "!"))
                                and ("=" in line or line.startswith("["))))["Service"]
    credentials = dict(value.split(":", 1) for value in unit["LoadCredential"])
    environment = dict(value.split("=", 1) for value in unit["Environment"])
    creds_dir = tmp_path / "credentials"
    creds_dir.mkdir()
    for name in credentials:
        (creds_dir / name).write_text(f"value-of-{name}\n")
    pointed = {value.removeprefix("%d/"): variable for variable, value in environment.items() if value.startswith("%d/")}
    assert set(pointed) == set(credentials)
    file_forms = {f"IMAGEVAULT_{name.upper()}_FILE" for name in SECRET_SETTINGS}
    for variable in pointed.values():
        assert variable in file_forms | {"IMAGEVAULT_TLS_KEY"}, variable
    env = {variable: value.replace("%d", str(creds_dir)) for variable, value in environment.items()}
    env["IMAGEVAULT_TLS_CERT"] = "/etc/imagevault/tls/cert.pem"
    config = load_config(environ=env)
    for name in SECRET_SETTINGS:
        assert getattr(config, name) == f"value-of-{name}", name
    assert config.tls_key == str(creds_dir / "tls_key") and config.log_format == "json"


@pytest.mark.parametrize("text", ["[Service]\nUser imagevault\n", "User=x\n", "[Service]\nExecStart=/bin/a \\\n  b\n"])
def test_the_strict_reader_refuses_what_it_does_not_understand(text):
    with pytest.raises(AssertionError):
        parse_unit(text)
