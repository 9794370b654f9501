"""Schemathesis against the real daemon's /openapi.json, once per role.

Starts a daemon on a fresh data directory, creates a token for every role and runs
``schemathesis run --checks all`` with each (every operation: coverage, fuzzing and stateful
phases; checks include not_a_server_error, status code and response schema conformance).
``schemathesis.toml`` at the repository root holds the few statuses a schema cannot predict.
``make fuzz`` runs it long; tests/test_fuzz.py runs a bounded version in ``make test``.

    python tests/fuzz.py --max-examples 500
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.infra.daemon import Daemon, cli  # noqa: E402
from tests.infra.process import find_binary  # noqa: E402

# admin last: its key administration (rotate, retire, epoch) must not change what the others see.
ROLES = ("clinician", "dpo", "researcher", "operator", "auditor", "admin")


def find_schemathesis() -> str | None:
    return find_binary("schemathesis")


def run_fuzz(max_examples: int, workdir: Path, roles: tuple[str, ...] = ROLES, seed: int | None = None) -> dict[str, object]:
    binary = find_schemathesis()
    if binary is None:
        raise RuntimeError("schemathesis is not installed (pip install schemathesis)")
    data_dir = workdir / "data"
    cli(data_dir, "init")
    tokens = {
        role: cli(data_dir, "token", "create", *(() if role == "admin" else ("--tenant", "fuzz-clinic")),
                  "--role", role, "--name", f"fuzz-{role}").stdout.strip()
        for role in roles
    }
    daemon = Daemon(data_dir, workdir / "daemon.log")
    results: dict[str, dict[str, object]] = {}
    started = time.monotonic()
    try:
        for role, token in tokens.items():
            command = [
                binary, "run", f"{daemon.url}/openapi.json",
                "--max-examples", str(max_examples), "--warnings", "off",
                "-H", f"Authorization: Bearer {token}",
            ]
            if seed is not None:
                command += ["--seed", str(seed)]
            done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=3600)
            output = done.stdout + done.stderr
            generated = re.search(r"(\d+) generated", output)
            results[role] = {
                "exit_code": done.returncode,
                "cases": int(generated.group(1)) if generated else 0,
                "failures": re.findall(r"❌ (ST\d+ [^:\n]+)", output),
                "output_tail": output[-4000:] if done.returncode else "",
            }
    finally:
        code = daemon.stop()
    server_errors = (workdir / "daemon.log").read_text(errors="replace").count("unexpected error")
    return {
        "max_examples": max_examples,
        "cases": sum(int(r["cases"]) for r in results.values()),
        "failed_roles": [role for role, r in results.items() if r["exit_code"] != 0],
        "server_errors_logged": server_errors,
        "daemon_exit_code": code,
        "seconds": round(time.monotonic() - started, 1),
        "roles": results,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description="schemathesis against every role")
    parser.add_argument("--max-examples", type=int, default=500)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fuzz.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = run_fuzz(args.max_examples, Path(tmp), seed=args.seed)
    summary = {k: v for k, v in report.items() if k != "roles"}
    summary["roles"] = {role: {k: v for k, v in r.items() if k != "output_tail"} for role, r in report["roles"].items()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    for role, r in report["roles"].items():
        if r["exit_code"]:
            print(f"--- {role}\n{r['output_tail']}", file=sys.stderr)
    return 1 if report["failed_roles"] or report["server_errors_logged"] else 0


if __name__ == "__main__":
    sys.exit(main())
