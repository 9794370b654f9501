"""The hot paths alone, fast: upload and download against their ceiling and peer, with profiles.

``make bench`` takes a quarter of an hour; this runs only what a change to the data path moves,
in a few minutes, with the same driver and the same server CPU accounting (``/proc`` of each
server process), targets alternating in rotating order within one run:

- upload: imagevault (local keyring) against the sink that computes the two SHA-256 digests
  and AES-256-GCM over 256 KiB chunks (``bench/sink.py --digests 2 --aes-gcm``), the mandatory
  work done with nothing else;
- download: imagevault against SeaweedFS S3 GET and the bare sink (sendfile).

``--profile DIR`` samples the imagevault daemon with py-spy (``--native``) during the first
round of each phase and writes the collapsed stacks plus a summary of the top frames (self and
inclusive share of samples) to DIR. ``--compare-code TREE`` adds a second daemon running another
source tree (before/after a change in one run).

    python -m bench.hotpaths [--rounds 3] [--profile /tmp/prof] [--compare-code /work/main]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import driver, peers  # noqa: E402
from bench.images import default_specs, ensure_images  # noqa: E402


def log(message: str) -> None:
    print(f"[hotpaths {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# Stacks that are a thread waiting, not working: py-spy's idle detection does not see through
# native frames, so a futex wait under a queue get or a lock counts as a sample otherwise.
_WAITING = ("PyThread_acquire_lock_timed", "_queue_SimpleQueue_get", "epoll_pwait", "epoll_wait", "poll (",
            "select (", "sem_clockwait", "pthread_cond_timedwait", "pthread_cond_wait")
_PLUMBING = ("Thread._bootstrap", "Thread.run", "thread_run", "_worker (futures", "_run_code", "_run_module_as_main",
             "main (cli", "cmd_serve", "run_app", "_run_once", "run_forever", "run_until_complete", "Handle._run",
             "<module>")


def top_frames(collapsed: Path, limit: int = 15) -> dict[str, Any]:
    """Share of the working (non-waiting) samples per frame: ``self`` counts the deepest Python
    frame of each sample (native frames below it are the C work it called), ``inclusive``
    every frame on the stack."""
    self_counts: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    native_counts: collections.Counter[str] = collections.Counter()
    total = waiting = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        raw = stack.split(";")
        if any(marker in frame for frame in raw[-4:] for marker in _WAITING):
            waiting += count
            continue
        frames = [_frame_name(f) for f in raw]
        python = [f for f in frames if ".py" in f and not any(p in f for p in _PLUMBING)]
        total += count
        self_counts[python[-1] if python else "(native only)"] += count
        native_counts[frames[-1]] += count
        for name in set(python):
            incl_counts[name] += count

    def share(counter: collections.Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / max(1, total), 1)] for name, n in counter.most_common(limit)]

    return {"working_samples": total, "waiting_samples": waiting, "self_pct": share(self_counts),
            "inclusive_pct": share(incl_counts), "leaf_pct": share(native_counts)}


def _frame_name(frame: str) -> str:
    # py-spy raw frames: "function (path/to/file.py:123)" or a native "symbol (lib.so)".
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path = where.rsplit(":", 1)[0]
    short = "/".join(Path(path).parts[-2:]) if path else ""
    return f"{name} ({short})" if short else name


class Spy:
    """py-spy recording one process until stopped."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        binary = peers.find_binary("py-spy")
        if binary is None:
            raise RuntimeError("py-spy not installed (pip install -e '.[bench]')")
        self.proc = subprocess.Popen([binary, "record", "--native", "--rate", "250", "--format", "raw",
                                      "-o", str(out), "-p", str(pid)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)  # attached before the phase starts

    def stop(self) -> dict[str, Any]:
        import signal

        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=60)
        return top_frames(self.out) if self.out.exists() else {"error": "no profile written"}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    images = ensure_images(default_specs())
    total_body = [i.read() for i in images if i.kind == "total_body"]
    workdir = Path(tempfile.mkdtemp(prefix="iv-hotpaths-", dir=args.workdir))
    started: list[peers.ServerProcess] = []
    result: dict[str, Any] = {"concurrency": args.concurrency, "rounds": args.rounds}
    try:
        sink = peers.SinkServer(workdir / "sink", workdir / "sink.log")
        started.append(sink)
        crypto_sink = peers.SinkServer(workdir / "sink-crypto", workdir / "sink-crypto.log", digests=2, aes_gcm=True)
        started.append(crypto_sink)
        seaweed = peers.SeaweedServer(workdir / "seaweed", workdir / "seaweed.log")
        started.append(seaweed)
        local = peers.ImageVaultDaemon(workdir / "iv", workdir / "iv.log", name="imagevault-local")
        started.append(local)
        up_entries = [(driver.SinkTarget(crypto_sink.url, "disk-ceiling+2sha256+aesgcm"), crypto_sink),
                      (driver.VaultTarget(local.url, local.token, "imagevault-local"), local)]
        down_entries = [(driver.SinkTarget(sink.url, "disk-ceiling"), sink),
                        (driver.S3Target(seaweed.endpoint, seaweed.bucket, seaweed.access_key, seaweed.secret_key,
                                         name="seaweedfs-s3"), seaweed),
                        (driver.VaultTarget(local.url, local.token, "imagevault-local"), local)]
        if args.compare_code:
            other = peers.ImageVaultDaemon(workdir / "iv-compare", workdir / "iv-compare.log",
                                           name="imagevault-compare", code_root=Path(args.compare_code))
            started.append(other)
            target = driver.VaultTarget(other.url, other.token, "imagevault-compare")
            up_entries.append((target, other))
            down_entries.append((target, other))
        profile_dir = Path(args.profile) if args.profile else None
        if profile_dir:
            profile_dir.mkdir(parents=True, exist_ok=True)
        stored: dict[str, list[tuple[str, int]]] = {}
        rows: dict[str, dict[str, list[dict[str, float]]]] = {"upload": {}, "download": {}}
        for phase, entries in (("upload", up_entries), ("download", down_entries)):
            for r in range(args.rounds):
                order = entries[r % len(entries):] + entries[:r % len(entries)]
                for target, process in order:
                    spy = None
                    if profile_dir and r == 0 and target.name.startswith("imagevault"):
                        spy = Spy(process.pid, profile_dir / f"{phase}-{target.name}.txt")
                    cpu0 = process.cpu_seconds()
                    if phase == "upload":
                        if target.name in stored and isinstance(target, driver.SinkTarget):
                            await driver.delete_all(target, stored.pop(target.name))
                        res = await driver.upload_phase(target, total_body, concurrency=args.concurrency,
                                                        count=args.uploads, seed=r)
                        if target.name in stored:
                            stored[target.name].extend(res.keys)
                        else:
                            stored[target.name] = list(res.keys)
                    else:
                        keys = stored.get(target.name)
                        if keys is None:  # the download-only targets get the same images once
                            up = await driver.upload_phase(target, total_body, concurrency=args.concurrency,
                                                           count=len(total_body) * 2)
                            keys = stored[target.name] = list(up.keys)
                            cpu0 = process.cpu_seconds()
                        res = await driver.download_phase(target, keys, concurrency=args.concurrency,
                                                          count=args.downloads)
                    cpu = process.cpu_seconds() - cpu0
                    row = {"mb_s": round(res.mb_s, 1), "server_cpu_s_per_gb": round(cpu / (res.payload_bytes / 1e9), 3),
                           "errors": len(res.errors)}
                    rows[phase].setdefault(target.name, []).append(row)
                    log(f"{phase:<8} round {r + 1} {target.name:<30} {row['mb_s']:7.1f} MB/s "
                        f"{row['server_cpu_s_per_gb']:.3f} CPU s/GB" + (f" errors {res.errors[:2]}" if res.errors else ""))
                    if spy is not None:
                        result.setdefault("profiles", {})[f"{phase}-{target.name}"] = spy.stop()
        summary: dict[str, Any] = {}
        for phase, by_target in rows.items():
            summary[phase] = {name: {"median_mb_s": statistics.median(r["mb_s"] for r in values),
                                     "median_server_cpu_s_per_gb": statistics.median(r["server_cpu_s_per_gb"] for r in values),
                                     "rounds": values}
                              for name, values in by_target.items()}
        result["phases"] = summary
        up, down = summary["upload"], summary["download"]
        ceiling = up["disk-ceiling+2sha256+aesgcm"]["median_server_cpu_s_per_gb"]
        result["ratios"] = {
            "upload_cpu_vs_crypto_ceiling": round(up["imagevault-local"]["median_server_cpu_s_per_gb"] / ceiling, 3),
            "download_mb_s_vs_seaweedfs": round(down["imagevault-local"]["median_mb_s"]
                                                / down["seaweedfs-s3"]["median_mb_s"], 3),
            "download_cpu_vs_seaweedfs": round(down["imagevault-local"]["median_server_cpu_s_per_gb"]
                                               / down["seaweedfs-s3"]["median_server_cpu_s_per_gb"], 3),
        }
    finally:
        for process in reversed(started):
            process.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return result


def markdown(result: dict[str, Any]) -> str:
    """The profiles' top frames side by side, and the phases' medians, as Markdown."""
    lines = ["## Hot paths (`bench/hotpaths.py`)", "",
             (f"{result['rounds']} rounds, {result['concurrency']} clients, targets alternating; "
              "server CPU s/GB from /proc of each server process."), "",
             "| phase | target | median MB/s | median server CPU s/GB | per round (CPU s/GB) |", "|---|---|---|---|---|"]
    for phase, targets in result["phases"].items():
        for name, row in targets.items():
            rounds = " / ".join(f"{r['server_cpu_s_per_gb']:.2f}" for r in row["rounds"])
            lines.append(f"| {phase} | {name} | {row['median_mb_s']:.1f} | {row['median_server_cpu_s_per_gb']:.3f} | {rounds} |")
    lines += ["", "Ratios: " + ", ".join(f"{k} **{v}**" for k, v in result["ratios"].items()), ""]
    for name, prof in sorted(result.get("profiles", {}).items()):
        lines += [f"### {name}", "",
                  (f"{prof['working_samples']} working samples (py-spy --native, 250 Hz; "
                   f"{prof['waiting_samples']} samples of threads waiting left out)."), "",
                  "| self: deepest Python frame | % | native leaf | % |", "|---|---|---|---|"]
        for (frame, pct), (leaf, lpct) in zip(prof["self_pct"][:12], prof["leaf_pct"][:12]):
            lines.append(f"| `{frame}` | {pct} | `{leaf}` | {lpct} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description="upload/download hot paths against their ceiling and peer")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--uploads", type=int, default=64, help="uploads per round and target")
    parser.add_argument("--downloads", type=int, default=128, help="downloads per round and target")
    parser.add_argument("--profile", default=None, help="directory for py-spy profiles of the daemon")
    parser.add_argument("--compare-code", default=None, help="also run imagevault from this source tree")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None, help="write the result JSON here")
    parser.add_argument("--markdown", default=None, help="write the phases and profiles as Markdown here")
    args = parser.parse_args()
    import uvloop

    uvloop.install()
    result = asyncio.run(run(args))
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.markdown:
        Path(args.markdown).write_text(markdown(result))
    print(json.dumps(result["ratios"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
