"""The console's patient grid in a real browser: time to the first complete thumbnail grid of a
120-image patient, and the bytes the browser transferred for it. Goal: < 1.5 s on loopback.

A real daemon (``tests/infra/console.py``: a subprocess on a loopback port, renditions made by
its own worker) holds one patient's 120 photographs over 12 visits and 2 body sites; Debian's
headless Chromium, driven by Playwright, signs in with a clinician token and finds the patient,
in a fresh browser context per round (nothing cached: every answer is ``no-store`` anyway).

Measured per round, in the browser (``performance`` marks the page sets): from the Find
button's submit to the first thumbnail shown, and to the whole grid shown (every thumbnail
fetched and decoded, ``aria-busy`` false). Bytes: every response body and header the browser
received for the view (Playwright's ``request.sizes()``), split into the page's own files
(HTML, JS, CSS, icon, loaded once per sign-in) and the grid (the search and 120 thumbnails).
Writes bench/results/console.json.

    python bench/console.py --images 120 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import default_path, write_result
from tests.infra.console import ConsoleServer, launch_chromium, visit_images

PATIENT = "BENCH-PATIENT-0120"
GOAL_SECONDS = 1.5


def measure_round(browser, server: ConsoleServer, images: int) -> dict[str, float]:
    context = browser.new_context(base_url=server.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    finished: list[tuple[str, object]] = []
    phase = ["page"]
    # Network requests only (a blob: URL the page makes is no transfer).
    page.on("requestfinished", lambda request: request.url.startswith("http") and finished.append((phase[0], request)))
    page.goto("/console/")
    page.get_by_label("Access token").fill(server.tokens["clinician"])
    page.get_by_role("button", name="Sign in").click()
    page.locator("#account").wait_for(state="visible")
    page.wait_for_load_state("networkidle")
    phase[0] = "grid"
    page.locator("#find-patient").fill(PATIENT)
    started = time.perf_counter()
    page.get_by_role("button", name="Find").click()
    page.wait_for_function(f"() => document.querySelectorAll('.thumb img').length === {images} "
                           "&& document.getElementById('grid').getAttribute('aria-busy') === 'false'", timeout=60000)
    wall = time.perf_counter() - started
    marks = page.evaluate("""() => {
        const at = name => performance.getEntriesByName(name)[0].startTime;
        return {grid: at('grid-complete') - at('find-submitted'), first: at('first-thumbnail') - at('find-submitted')};
    }""")
    page.wait_for_load_state("networkidle")
    sizes = []
    for where, request in finished:
        size = request.sizes()
        sizes.append((where, size["responseBodySize"] + size["responseHeadersSize"]))
    context.close()
    return {
        "grid_seconds": round(marks["grid"] / 1000, 3), "first_thumbnail_seconds": round(marks["first"] / 1000, 3),
        "wall_seconds_from_click": round(wall, 3),
        "grid_bytes": sum(n for where, n in sizes if where == "grid"),
        "grid_requests": sum(1 for where, _ in sizes if where == "grid"),
        "page_bytes": sum(n for where, n in sizes if where == "page"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=default_path("console"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="console-bench-") as root:
        server = ConsoleServer(Path(root)).start()
        try:
            images = visit_images(args.images, visits=12)
            for image in images:
                image["size"] = (1600, 1200)
            server.seed(PATIENT, images)
            with sync_playwright() as playwright:
                browser = launch_chromium(playwright)
                rounds = [measure_round(browser, server, args.images) for _ in range(args.rounds)]
                browser.close()
        finally:
            server.stop()
    grid = [r["grid_seconds"] for r in rounds]
    result = {
        "benchmark": "console", "images": args.images, "visits": 12, "body_sites": 2, "rounds": args.rounds,
        "original_resolution": [1600, 1200], "browser": "Debian chromium, headless, via Playwright",
        "goal": f"first complete thumbnail grid < {GOAL_SECONDS} s on loopback",
        "grid_seconds_median": statistics.median(grid), "grid_seconds_max": max(grid),
        "first_thumbnail_seconds_median": statistics.median(r["first_thumbnail_seconds"] for r in rounds),
        "grid_bytes_median": int(statistics.median(r["grid_bytes"] for r in rounds)),
        "page_bytes_median": int(statistics.median(r["page_bytes"] for r in rounds)),
        "goal_met": max(grid) < GOAL_SECONDS,
        "per_round": rounds,
    }
    write_result(args.out, result)


if __name__ == "__main__":
    main()
