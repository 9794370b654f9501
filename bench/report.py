"""The Markdown report and PNG plots of one ``bench/run.py`` result.

``write(result, directory)`` writes ``<name>.md`` and ``<name>-throughput.png``,
``<name>-latency.png``, ``<name>-ratios.png``, ``<name>-rounds.png`` (plots only if matplotlib
is installed: it is in the ``bench`` extra). Re-render a stored result with
``python -m bench.report bench/results/<name>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _fmt(value: Any, suffix: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.3g}{suffix}" if abs(value) < 10 else f"{value:,.1f}{suffix}"
    return f"{value}{suffix}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return "\n".join(lines)


def plots(result: dict[str, Any], directory: Path) -> dict[str, str]:
    """Write the PNGs; returns {kind: file name} of those written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    name = result["name"]
    written: dict[str, str] = {}

    # 1. Ratio bars with the goal lines.
    ratios = []
    for row in result.get("goals", []):
        if isinstance(row.get("value"), (int, float)) and row["target"].startswith(">="):
            ratios.append((row["goal"], row["value"], float(row["target"].split()[-1])))
    if ratios:
        fig, ax = plt.subplots(figsize=(8, 3.6))
        labels = [r[0].replace(" vs ", "\nvs ") for r in ratios]
        colours = ["tab:green" if r[1] >= r[2] else "tab:red" for r in ratios]
        bars = ax.bar(range(len(ratios)), [r[1] for r in ratios], color=colours)
        for i, (_, value, goal) in enumerate(ratios):
            ax.hlines(goal, i - 0.4, i + 0.4, colors="black", linestyles="dashed")
            ax.text(i, value + 0.02, f"{value:.2f}", ha="center", va="bottom", fontsize=9)
        ax.set_xticks(range(len(ratios)), labels, fontsize=8)
        ax.set_ylabel("ratio (same run, medians)")
        ax.set_title("imagevault against its goals (dashed: goal)")
        ax.set_ylim(0, max(1.2, max(r[1] for r in ratios) + 0.2))
        del bars
        fig.tight_layout()
        fig.savefig(directory / f"{name}-ratios.png", dpi=110)
        plt.close(fig)
        written["ratios"] = f"{name}-ratios.png"

    # 2. Per-round driver throughput of every target (upload and download).
    tp = result.get("throughput")
    if tp:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for ax, kind in zip(axes, ("upload", "download")):
            for target, data in tp[kind].items():
                ax.plot([r["round"] + 1 for r in data["rounds"]], [r["mb_s"] for r in data["rounds"]], marker="o", label=target)
            ax.set_title(f"{kind}: {result['concurrency']} clients, per round")
            ax.set_xlabel("round")
            ax.set_ylabel("MB/s")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(directory / f"{name}-rounds.png", dpi=110)
        plt.close(fig)
        written["rounds"] = f"{name}-rounds.png"

    # 3 and 4. Locust: throughput and latency percentiles over time.
    for daemon, loc in (result.get("locust") or {}).items():
        ts = loc.get("timeseries") or {}
        if not ts.get("t"):
            continue
        suffix = "" if daemon == "imagevault-local" else f"-{daemon}"
        fig, ax = plt.subplots(figsize=(9, 3.6))
        ax.plot(ts["t"], ts["upload_mb_s"], label="uploaded MB/s")
        ax.plot(ts["t"], ts["download_mb_s"], label="downloaded MB/s")
        ax.set_xlabel("seconds")
        ax.set_ylabel("MB/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(f"locust mixed clinic traffic against {daemon}: {loc['users']} users")
        fig.tight_layout()
        fig.savefig(directory / f"{name}-throughput{suffix}.png", dpi=110)
        plt.close(fig)
        written[f"throughput{suffix}"] = f"{name}-throughput{suffix}.png"

        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharex=True)
        for ax, kind, title in zip(axes, ("upload", "download", "search"),
                                   ("total-body upload", "download (whole image)", "timeline search")):
            for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
                values = ts.get(f"{kind}_{q}_ms") or []
                points = [(t, v) for t, v in zip(ts["t"], values) if v is not None]
                if points:
                    ax.plot([p[0] for p in points], [p[1] for p in points], style, marker=".", label=q)
            ax.set_title(title)
            ax.set_xlabel("seconds")
            ax.set_ylabel("ms")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
            if ax.get_lines():
                ax.legend(fontsize=8)
        fig.suptitle(f"latency percentiles over time ({daemon}, {ts['bucket_seconds']:.0f} s windows)")
        fig.tight_layout()
        fig.savefig(directory / f"{name}-latency{suffix}.png", dpi=110)
        plt.close(fig)
        written[f"latency{suffix}"] = f"{name}-latency{suffix}.png"
    return written


def markdown(result: dict[str, Any], images: dict[str, str]) -> str:
    env = result.get("environment", {})
    out = [f"# imagevault benchmark: {result['name']}", ""]
    out.append(
        f"Commit `{env.get('commit')}`, {env.get('time')}, {env.get('cpus')} CPUs, Python {env.get('python')}; "
        f"load average at start {', '.join(f'{x:.1f}' for x in env.get('load_average', []))}, at end "
        f"{', '.join(f'{x:.1f}' for x in env.get('load_average_end', []))}. "
        + ("**Quick run** (smaller everything: a smoke test, not a measurement). " if result.get("quick") else "")
        + "The machine is shared: absolute numbers are noisy; ratios come from one run with targets "
          "alternating in rotating order, medians over rounds.")
    out += ["", "## Goals", ""]
    rows = []
    for g in result.get("goals", []):
        mark = {True: "met", False: "**missed**", None: "reported"}[g["met"]]
        rows.append([g["goal"], _fmt(g["value"]), g["target"], mark, g.get("detail", "")])
    out.append(_table(["goal", "measured", "target", "", "detail"], rows))
    if "ratios" in images:
        out += ["", f"![ratios]({images['ratios']})"]

    tp = result.get("throughput")
    if tp:
        out += ["", "## Throughput (upload-only driver, same images, same client for every target)", ""]
        imgs = result.get("images", {})
        out.append(
            f"{result['concurrency']} concurrent clients; {result['profile']['uploads_per_round']} uploads per round "
            f"from {imgs.get('total_body')} total-body JPEGs ({min(imgs.get('sizes_mb', [0]))}–{max(imgs.get('sizes_mb', [0]))} MB, "
            f"{imgs.get('total_body_mb')} MB in all); {result['profile']['rounds']} rounds. "
            "MB/s = 10^6 image bytes per second of wall time. CPU s/GB = CPU seconds the server process "
            "(all threads) spent per GB moved; the client (this driver) shares the same 2 cores.")
        for kind in ("upload", "download"):
            out += ["", f"### {kind.capitalize()}", ""]
            rows = []
            for target, data in tp[kind].items():
                rows.append([target, data["median_mb_s"], " / ".join(f"{r['mb_s']:.0f}" for r in data["rounds"]),
                             data["median_p99_ms"], data["server_cpu_s_per_gb"], data["client_cpu_s_per_gb"]])
            out.append(_table(["target", "median MB/s", "per round", "p99 ms (median)", "server CPU s/GB",
                               "client CPU s/GB"], rows))
        out += ["", f"Peer: {result.get('peer', {}).get('durability')}. imagevault and the disk ceiling fsync the "
                    "blob (and the directory) before answering 201. imagevault runs as `serve` does by "
                    "default (one worker process per core); its rendition jobs are queued but not run "
                    "(bench/renditions.py measures them). Server CPU is summed over each server's processes."]
        if "rounds" in images:
            out += ["", f"![rounds]({images['rounds']})"]

    lat = result.get("latency")
    if lat:
        out += ["", f"## Upload latency: {lat['image_bytes'] / 1e6:.1f} MB image, {lat['concurrency']} concurrent sessions", ""]
        out.append(_table(["target", "uploads", "p50 ms", "p90 ms", "p99 ms", "max ms"],
                          [[t, v["uploads"], v["p50_ms"], v["p90_ms"], v["p99_ms"], v["max_ms"]]
                           for t, v in lat["targets"].items()]))

    kms = result.get("kms")
    if kms:
        out += ["", "## KMS (OpenBao Transit)", ""]
        out.append(f"{kms['transit_calls_total']:.0f} Transit calls for {kms['transit_images']} uploaded images: "
                   f"**{kms['transit_calls_per_image']} calls per image** "
                   f"(by kind: {', '.join(f'{k} {v:.0f}' for k, v in kms['transit_calls_by_kind'].items() if v)}).")

    for daemon, loc in (result.get("locust") or {}).items():
        out += ["", f"## Mixed clinic traffic (locust) against {daemon}", ""]
        if "stats" not in loc:
            out.append(f"Not run: {loc.get('skipped') or loc.get('error')}")
            continue
        out.append(f"{loc['users']} users for {loc['seconds']} s: total-body rooms (sessions of "
                   f"{result['profile']['session_min']}–{result['profile']['session_max']} JPEGs of 2–8 MB), "
                   "dermoscopy follow-ups (2–4 images of 1–3 MB, then the lesion timeline), viewers (timeline "
                   "search, whole downloads, 1 MiB ranges) and one eraser (expired-retention deletes as a clinician, "
                   f"DPO overrides). Server CPU {loc.get('server_cpu_s')} s.")
        out += ["", _table(["request", "count", "failures", "median ms", "p95 ms", "p99 ms", "max ms", "req/s"],
                           [[s["type"] + " " + s["name"] if s["name"] != "Aggregated" else "**all**", s["requests"],
                             s["failures"], s["median_ms"], s["p95_ms"], s["p99_ms"], s["max_ms"], s["rps"]]
                            for s in loc["stats"]])]
        suffix = "" if daemon == "imagevault-local" else f"-{daemon}"
        for kind in ("throughput", "latency"):
            if f"{kind}{suffix}" in images:
                out += ["", f"![{kind}]({images[kind + suffix]})"]

    micro = result.get("micro") or {}
    if micro:
        out += ["", "## Micro-benchmarks", ""]
        s = micro.get("seal_open")
        if s:
            out.append(f"- **Blob seal/open** ({s['buffer_mib']} MiB buffer, {s['chunk_kib']} KiB chunks, "
                       f"{s['update_piece_kib']} KiB pieces): seal {s['seal_mb_s']} MB/s vs raw AES-GCM + SHA-256 "
                       f"{s['raw_aes_gcm_plus_sha256_mb_s']} MB/s (×{s['seal_vs_raw']}); open {s['open_mb_s']} MB/s "
                       f"vs raw decrypt {s['raw_aes_gcm_decrypt_mb_s']} MB/s (×{s['open_vs_raw']}). Alone on one "
                       f"core: SHA-256 {s['sha256_alone_mb_s']} MB/s, AES-256-GCM encrypt {s['aes_gcm_encrypt_alone_mb_s']} MB/s.")
        g = micro.get("group_commit")
        if g:
            out.append(f"- **LMDB group commit**: {g['concurrent_records_s']:,} records/s with {g['concurrency']} "
                       f"concurrent writers ({g['records_per_commit_concurrent']} records per fsync) vs "
                       f"{g['one_by_one_records_s']:,} records/s one by one (×{g['speedup']}).")
        t = micro.get("timeline_search")
        if t:
            out.append(f"- **Timeline search** at {t['records']:,} records (one patient's {t['mean_results']} "
                       f"records, {t['patients_searched']} patients): `Vault.search` p50/p99 "
                       f"{t['search_cold_p50_ms']}/{t['search_cold_p99_ms']} ms with a cold DEK cache, "
                       f"{t['search_warm_p50_ms']}/{t['search_warm_p99_ms']} ms warm; the index scan alone "
                       f"{t['index_scan_p50_ms']}/{t['index_scan_p99_ms']} ms"
                       + (f"; CPU per search (p50) {t['search_cold_cpu_p50_ms']} ms cold, "
                          f"{t['search_warm_cpu_p50_ms']} ms warm; the durable audit append alone p50/p99 "
                          f"{t['audit_append_p50_ms']}/{t['audit_append_p99_ms']} ms" if "audit_append_p50_ms" in t else "")
                       + f". Index {t['index_mb']} MB"
                       + (f", filled in {t['fill_seconds']} s" if t.get("fill_seconds") else "")
                       + (" (cached)" if t.get("index_cached") else "") + ".")
        r = micro.get("big_image_rss")
        if r:
            out.append(f"- **Peak RSS** with a {r['image_bytes'] / (1 << 30):.2f} GiB image streamed in "
                       f"({r['upload_mb_s']} MB/s) and out ({r['download_mb_s']} MB/s): {r['peak_rss_mb']} MB "
                       f"(VmHWM; {r['baseline_rss_mb']} MB at idle).")
    rss = result.get("rss_after_throughput_mb")
    if rss:
        out += ["", "Peak RSS of each server after the throughput phases: "
                + ", ".join(f"{k} {v} MB" for k, v in rss.items()) + "."]
    out += ["", "Raw numbers: `" + result["name"] + ".json` beside this file. Reproduce with "
                + ("`make bench-quick`." if result.get("quick") else "`make bench`."), ""]
    return "\n".join(out)


def write(result: dict[str, Any], directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    images = plots(result, directory)
    path = directory / f"{result['name']}.md"
    path.write_text(markdown(result, images))
    return path


if __name__ == "__main__":
    source = Path(sys.argv[1])
    print(write(json.loads(source.read_text()), source.parent))
