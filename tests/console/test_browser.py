"""The console in a real browser: Debian's headless Chromium driven by Playwright, against the
real daemon as a subprocess on a loopback port (renditions made by its own workers).

The tests run in file order and share one daemon: a clinician finds a patient, compares a
lesion, edits metadata and uploads a session; operator, admin and auditor views; a DPO erases
the patient; forged cross-site requests are refused; an idle session signs itself out (its own
daemon, with a short idle timeout). The last test checks what every page did: no URL, title or
log line with the patient identifier, no console errors, only the failed answers expected.
"""

from __future__ import annotations

import base64
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import pytest

from tests.deploy.tools import require_tool
from tests.infra.console import (
    ConsoleServer,
    launch_chromium,
    photo,
    screenshot_dir,
    visit_images,
)

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

PATIENT = "HOSP-7781-QX"  # the patient the clinician and the DPO work on
OTHER_PATIENT = "HOSP-5522-KW"  # the target of the forged requests
AXE = (Path(__file__).parent / "vendor" / "axe.min.js").read_text()
IMAGES = 6


class Recorder:
    """Everything the browser did that the final test checks."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.titles: list[str] = []
        self.console_errors: list[str] = []
        self.failed: list[tuple[str, str, int]] = []  # method, path, status of API answers >= 400

    def watch(self, context: Any, page: Any, *, failures_expected: bool = False) -> None:
        context.on("request", lambda request: self.urls.append(request.url))
        page.on("load", lambda loaded: self.titles.append(loaded.title()))
        if failures_expected:
            return
        page.on("console", lambda message: message.type == "error" and self.console_errors.append(message.text))
        page.on("pageerror", lambda error: self.console_errors.append(f"page error: {error}"))
        page.on("response", lambda response: response.status >= 400 and self.failed.append(
            (response.request.method, response.url.split("?")[0].split("/", 3)[-1], response.status)))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    console = ConsoleServer(tmp_path_factory.mktemp("console")).start()
    try:
        console.records = console.seed(PATIENT, visit_images(IMAGES))
        console.seed(OTHER_PATIENT, visit_images(1, lesion="L-9", first_seed=50))
        yield console
    finally:
        console.stop()


@pytest.fixture(scope="module")
def browser() -> Any:
    require_tool("chromium", "chromium")  # Debian's; fails in CI, skips elsewhere when it cannot be had
    with sync_api.sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return screenshot_dir() or tmp_path_factory.mktemp("screenshots")


def open_console(browser: Any, recorder: Recorder, url: str, **options: Any) -> Any:
    context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 900}, **options)
    page = context.new_page()
    recorder.watch(context, page)
    page.goto("/console/")
    recorder.titles.append(page.title())
    return page


def sign_in(page: Any, token: str) -> None:
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    page.locator("#account").wait_for(state="visible")
    assert page.get_by_label("Access token").input_value() == ""


def find_patient(page: Any, patient_id: str) -> None:
    page.locator("#find-patient").fill(patient_id)
    page.get_by_role("button", name="Find").click()
    page.locator("#patient-body").wait_for(state="visible")
    page.wait_for_function("() => document.getElementById('grid').getAttribute('aria-busy') === 'false'")


def serious_axe_violations(page: Any) -> list[dict[str, Any]]:
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(AXE)  # evaluated by the test driver: the page's CSP still forbids inline scripts
    found = page.evaluate("""async () => (await axe.run(document, {resultTypes: ['violations']})).violations
        .map(v => ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.target.join(' ')).slice(0, 3)}))""")
    return [violation for violation in found if violation["impact"] in ("serious", "critical")]


def check_view(page: Any, shots: Path, name: str) -> None:
    assert serious_axe_violations(page) == [], name
    assert page.title() == "imagevault console"
    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    # 200 % zoom of the 1280 x 900 window: half as many CSS pixels; nothing may need a sideways scroll.
    page.set_viewport_size({"width": 640, "height": 450})
    overflow = page.evaluate("() => document.documentElement.scrollWidth - document.documentElement.clientWidth")
    page.set_viewport_size({"width": 1280, "height": 900})
    assert overflow <= 0, f"{name} needs horizontal scrolling at 200 % zoom ({overflow}px)"


def test_clinician_signs_in_finds_the_patient_and_sees_the_thumbnail_grid(server, browser, recorder, shots):
    page = open_console(browser, recorder, server.url)
    check_view(page, shots, "sign-in")
    for _ in range(4):  # by keyboard: the skip link, then the token field
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.id") == "signin-token":
            break
    page.keyboard.type(server.tokens["clinician"])
    page.keyboard.press("Enter")
    page.locator("#account").wait_for(state="visible")
    cookie = next(c for c in page.context.cookies() if c["name"] == "imagevault_session")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert page.evaluate("() => document.cookie") == ""  # nothing readable by the page
    assert server.tokens["clinician"] not in page.content()
    find_patient(page, PATIENT)
    thumbs = page.locator(".thumb")
    assert thumbs.count() == IMAGES
    loaded = page.locator(".thumb img").evaluate_all("imgs => imgs.map(i => i.complete && i.naturalWidth)")
    assert len(loaded) == IMAGES and all(width and width <= 256 for width in loaded)
    assert page.locator(".visit h3").all_inner_texts() == [
        "Visit 2024-03-10 · session V1", "Visit 2024-05-09 · session V2", "Visit 2024-07-08 · session V3"]
    assert "Body site: left_forearm" in page.locator(".visit").first.inner_text()
    consent = page.locator(".thumb .consent").all_inner_texts()
    assert len(consent) == IMAGES and consent[0] == "Consent: care, teaching, research"
    assert page.locator("#patient-summary").inner_text() == f"{IMAGES} images held for this patient."
    check_view(page, shots, "patient")
    page.context.close()


def test_compare_a_lesion_side_by_side_with_synchronised_zoom_and_full_resolution(server, browser, recorder, shots):
    page = open_console(browser, recorder, server.url)
    ranges: list[str] = []
    page.on("request", lambda request: "range" in request.headers and ranges.append(request.headers["range"]))
    sign_in(page, server.tokens["clinician"])
    find_patient(page, PATIENT)
    page.locator(".thumb", has_text="lesion L-7").first.click()
    page.get_by_role("button", name="Compare this lesion").click()
    page.locator("#compare-panes").wait_for(state="visible")
    page.wait_for_function("() => ['img-left', 'img-right'].every(id => document.getElementById(id).naturalWidth > 0)")
    left, right = page.locator("#compare-left").input_value(), page.locator("#compare-right").input_value()
    assert left != right  # first and last visit
    page.get_by_role("button", name="Zoom in").click()
    page.locator("#pane-left").focus()
    page.keyboard.press("+")
    page.keyboard.press("ArrowLeft")
    box = page.locator("#pane-right").bounding_box()
    page.mouse.move(box["x"] + 50, box["y"] + 50)
    page.mouse.down()
    page.mouse.move(box["x"] + 90, box["y"] + 70)
    page.mouse.up()
    transforms = page.evaluate("() => ['img-left', 'img-right'].map(id => document.getElementById(id).style.transform)")
    assert transforms[0] == transforms[1] and "scale" in transforms[0]
    preview_width = page.evaluate("() => document.getElementById('img-left').naturalWidth")
    assert preview_width <= 1280
    page.get_by_role("button", name="Load full resolution").click()
    page.wait_for_function("() => document.getElementById('compare-status').textContent === 'Full resolution loaded.'")
    assert page.evaluate("() => document.getElementById('img-left').naturalWidth") == 800
    assert ranges and all(value.startswith("bytes=") for value in ranges)
    assert "full resolution" in page.locator("#cap-left").inner_text()
    check_view(page, shots, "compare")
    page.context.close()


def test_metadata_edit_shows_the_apis_validation_message_then_saves(server, browser, recorder, shots):
    page = open_console(browser, recorder, server.url)
    sign_in(page, server.tokens["clinician"])
    find_patient(page, PATIENT)
    page.locator(".thumb").nth(1).focus()
    page.keyboard.press("Enter")  # thumbnails are buttons
    assert page.evaluate("() => document.activeElement.id") == "edit-captured_at"
    page.get_by_label("Body site", exact=True).fill("Left Arm")
    page.get_by_role("button", name="Save changes").click()
    message = page.locator("#edit-body_site-error")
    message.wait_for(state="visible")
    assert "body_site" in message.inner_text()
    assert page.locator("#edit-body_site").get_attribute("aria-invalid") == "true"
    check_view(page, shots, "metadata-validation")
    page.get_by_label("Body site", exact=True).fill("left_forearm")
    page.get_by_label("Description").fill("border sharper than at the last visit")
    page.get_by_label("Publication").check()
    page.get_by_role("button", name="Save changes").click()
    page.get_by_text("Saved.").wait_for()
    record_id = page.locator(".thumb").nth(1).get_attribute("data-id")
    with server.api("clinician") as client:
        record = client.get(f"/v1/images/{record_id}/metadata").json()
    assert record["description"] == "border sharper than at the last visit" and record["consent"]["publication"]
    assert "publication" in page.locator(f'.thumb[data-id="{record_id}"] .consent').inner_text()
    page.context.close()


def test_upload_two_images_by_file_chooser_and_drag_and_drop(server, browser, recorder, shots, tmp_path):
    page = open_console(browser, recorder, server.url)
    sign_in(page, server.tokens["clinician"])
    find_patient(page, PATIENT)
    page.get_by_label("Body site of the new images").fill("right_shin")
    page.get_by_label("Lesion of the new images (optional)").fill("L-12")
    first = tmp_path / "first.jpg"
    first.write_bytes(photo(101))
    page.locator("#upload-files").set_input_files(str(first))
    page.wait_for_function(f"() => document.querySelectorAll('.thumb').length === {IMAGES + 1}")
    dropped = page.evaluate_handle(
        """(b64) => { const dt = new DataTransfer();
                      const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                      dt.items.add(new File([bytes], 'second.jpg', {type: 'image/jpeg'})); return dt; }""",
        base64.b64encode(photo(102)).decode())
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": dropped})
    page.wait_for_function(f"() => document.querySelectorAll('.thumb').length === {IMAGES + 2}")
    page.wait_for_function("() => document.getElementById('grid').getAttribute('aria-busy') === 'false'")
    assert page.locator("#upload-progress li").all_inner_texts()[-1].endswith("stored")
    assert page.get_by_text("Body site: right_shin").count() == 1
    with server.api("clinician") as client:
        found = client.post("/v1/search", json={"patient_id": PATIENT, "lesion_id": "L-12"}).json()["items"]
    assert len(found) == 2 and {item["body_site"] for item in found} == {"right_shin"}
    check_view(page, shots, "upload")
    page.context.close()


def test_operator_admin_and_auditor_views(server, browser, recorder, shots):
    page = open_console(browser, recorder, server.url)
    sign_in(page, server.tokens["operator"])
    page.locator("#ops-stats tbody tr").first.wait_for()
    assert page.locator("#ops-stats tbody").inner_text().startswith("clinic-a")
    assert page.locator("#ops-keys-section").is_hidden()
    assert page.locator("#views button[data-view=patient]").is_hidden()
    check_view(page, shots, "operator")
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Access token").wait_for()

    sign_in(page, server.tokens["admin"])
    page.locator("#ops-keys dd").first.wait_for()
    assert "local" in page.locator("#ops-keys").inner_text()
    assert "idle" in page.locator("#ops-rewrap").inner_text() or "done" in page.locator("#ops-rewrap").inner_text()
    check_view(page, shots, "admin")
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("Access token").wait_for()

    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_in(page, server.tokens["auditor"])
    page.locator("#audit-table tbody tr").first.wait_for()
    assert page.locator("#audit-table tbody tr").count() > 5
    page.get_by_label("Actor").fill("console-dpo")
    page.get_by_role("button", name="Show entries").click()
    page.get_by_text("No entries.").wait_for()  # the DPO has done nothing yet
    page.get_by_label("Actor").fill("console-clinician")
    page.get_by_label("Entries per page").fill("5")
    page.get_by_role("button", name="Show entries").click()
    page.wait_for_function("() => !document.getElementById('audit-next').disabled")
    rows = page.locator("#audit-table tbody tr").all_inner_texts()
    assert len(rows) == 5 and all("console-clinician" in row for row in rows)
    page.get_by_role("button", name="Verify the chain").click()
    page.locator("#audit-head").wait_for()
    head = page.locator("#audit-head").inner_text()
    assert len(head) == 64 and "intact" in page.locator("#audit-verify-result").inner_text()
    page.get_by_role("button", name="Copy head hash").click()
    page.get_by_text("Head hash copied.").wait_for()
    assert page.evaluate("() => navigator.clipboard.readText()") == head
    check_view(page, shots, "auditor")
    page.context.close()


def test_dpo_access_report_then_erasure_removes_the_images_from_the_grid(server, browser, recorder, shots):
    page = open_console(browser, recorder, server.url)
    sign_in(page, server.tokens["dpo"])
    find_patient(page, PATIENT)
    assert page.locator(".thumb").count() == IMAGES + 2
    page.get_by_role("button", name="Data protection").click()
    assert page.locator("#dpo-patient").input_value() == PATIENT
    page.get_by_role("button", name="Access report").click()
    page.locator("#dpo-result table tbody tr").first.wait_for()
    assert "console-clinician (clinician)" in page.locator("#dpo-result").inner_text()
    page.get_by_role("button", name="Erase patient…").click()
    assert page.get_by_text("Enter the reason for this request.").is_visible()  # refused before any dialog
    page.get_by_label("Reason").fill("Art. 17 request received in writing")
    page.get_by_label("Override retention obligations").check()
    page.get_by_role("button", name="Erase patient…").click()
    dialog = page.locator("dialog#confirm")
    dialog.wait_for(state="visible")
    text = dialog.inner_text()
    assert "crypto-shredded" in text and "cannot be undone" in text and "overridden" in text
    page.screenshot(path=str(shots / "dpo-confirm.png"))
    page.get_by_role("button", name="Erase", exact=True).click()
    page.get_by_text(f"{IMAGES + 2} records erased").wait_for()
    check_view(page, shots, "dpo")
    page.get_by_role("button", name="Patient", exact=True).click()
    page.wait_for_function("() => document.querySelectorAll('.thumb').length === 0")
    assert page.locator("#patient-summary").inner_text() == "No images held for this patient."
    with server.api("clinician") as client:
        assert client.post("/v1/search", json={"patient_id": PATIENT}).json()["items"] == []
    page.context.close()


class _Attacker(BaseHTTPRequestHandler):
    """A page on another origin (another port) that forges requests to the daemon."""

    target = ""

    def do_GET(self) -> None:
        body = f"""<!doctype html><title>prize</title>
<form id="f" method="POST" action="{self.target}/v1/patients/legal-hold" enctype="text/plain">
<input name='{{"patient_id":"{OTHER_PATIENT}","hold":true,"reason":"x","pad":"' value='"}}'></form>
<script>
fetch("{self.target}/v1/patients/erase", {{method: "POST", mode: "no-cors", credentials: "include",
  headers: {{"Content-Type": "text/plain"}},
  body: JSON.stringify({{patient_id: "{OTHER_PATIENT}", reason: "x", override_retention: true}})}})
  .finally(() => document.getElementById("f").submit());
</script>""".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_forged_cross_site_requests_and_a_missing_csrf_header_are_refused(server, browser, recorder):
    page = open_console(browser, recorder, server.url)
    sign_in(page, server.tokens["dpo"])
    _Attacker.target = server.url
    attacker = ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    threading.Thread(target=attacker.serve_forever, daemon=True).start()
    try:
        evil = page.context.new_page()  # same browser, signed in to the console
        recorder.watch(page.context, evil, failures_expected=True)
        answers: list[tuple[str, int]] = []
        evil.on("response", lambda response: response.url.startswith(server.url) and answers.append(
            (response.url.rsplit("/", 1)[-1], response.status)))
        evil.goto(f"http://127.0.0.1:{attacker.server_port}/")
        evil.wait_for_url(f"{server.url}/v1/patients/legal-hold")
        deadline = time.monotonic() + 10
        while len(answers) < 2 and time.monotonic() < deadline:
            evil.wait_for_timeout(100)
        assert sorted(answers) == [("erase", 403), ("legal-hold", 403)]
        assert '"code": "csrf_rejected"' in evil.locator("body").inner_text()  # the form's answer
        # From the console's own origin, but without the CSRF header.
        bare = page.context.new_page()
        recorder.watch(page.context, bare, failures_expected=True)
        bare.goto(f"{server.url}/console/icon.svg")
        answer = bare.evaluate("""async (patient) => {
            const r = await fetch('/v1/patients/legal-hold', {method: 'POST', headers: {'Content-Type': 'application/json'},
                body: JSON.stringify({patient_id: patient, hold: true, reason: 'x'})});
            return [r.status, (await r.json()).error.code]; }""", OTHER_PATIENT)
        assert answer == [403, "csrf_rejected"]
    finally:
        attacker.shutdown()
    with server.api("dpo") as client:
        items = client.post("/v1/search", json={"patient_id": OTHER_PATIENT}).json()["items"]
    assert len(items) == 1 and items[0]["legal_hold"] is False  # nothing happened
    page.context.close()


def test_an_idle_session_signs_itself_out(browser, recorder, tmp_path_factory, shots):
    idle = ConsoleServer(tmp_path_factory.mktemp("idle"), env={"IMAGEVAULT_CONSOLE_IDLE_TIMEOUT": "8"}).start()
    try:
        page = open_console(browser, recorder, idle.url)
        sign_in(page, idle.tokens["auditor"])
        assert page.locator("#idle-left").inner_text().startswith("Sign-out in 0:0")
        warning = page.locator("#idle-warning")
        warning.wait_for(state="visible", timeout=10000)
        page.screenshot(path=str(shots / "idle-warning.png"))
        page.get_by_label("Access token").wait_for(state="visible", timeout=15000)
        assert "signed out after a period without activity" in page.locator("#notice").inner_text()
        assert page.locator("#account").is_hidden()
        # The server has forgotten the session too: the cookie is gone or no longer valid.
        assert page.evaluate("async () => (await (await fetch('/v1/session')).json()).signed_in") is False
    finally:
        idle.stop()


def test_no_patient_identifier_in_urls_titles_or_logs_and_no_console_errors(server, recorder):
    assert len(recorder.urls) > 50
    for patient in (PATIENT, OTHER_PATIENT):
        for form in {patient, quote(patient), quote_plus(patient), patient.lower()}:
            assert not [url for url in recorder.urls if form in url], form
            assert not [title for title in recorder.titles if form in title], form
        assert patient not in server.log_text()
    # The only failed answer the console's pages got is the validation error they were meant to
    # get, which Chromium reports on the console as a failed resource; nothing else was logged.
    assert [(method, path.rsplit("/", 1)[-1], status) for method, path, status in recorder.failed] == [
        ("PATCH", "metadata", 400)]
    assert len(recorder.console_errors) == 1 and recorder.console_errors[0].startswith(
        "Failed to load resource: the server responded with a status of 400"), recorder.console_errors
