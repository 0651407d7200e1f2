"""The chat page (`/`) in a real browser: Debian's Chromium, driven by
Playwright. argv[1] is the server (http://127.0.0.1:PORT), argv[2] a WAV
file of speech, argv[3] where to save a screenshot. The page is used as a
person would: pick the model, upload the WAV (its transcript fills the
message box), type a question, press Enter, wait for the streamed answer.
Prints one JSON object of what the page showed; the Rust test judges it."""
import json
import shutil
import sys

from playwright.sync_api import sync_playwright

base, wav, shot = sys.argv[1:4]
chromium = shutil.which("chromium") or shutil.which("chromium-browser")
out = {}
with sync_playwright() as p:
    browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
    page = browser.new_page(viewport={"width": 900, "height": 640})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(base + "/")
    page.wait_for_selector("#model option", state="attached", timeout=30_000)
    out["models"] = page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    out["mic_shown"] = page.is_visible("#mic")
    out["title"] = page.title()
    page.set_input_files("#wav", wav)
    # Polled from here: the page's Content-Security-Policy forbids the eval
    # that wait_for_function would need.
    for _ in range(600):
        if page.input_value("#q"):
            break
        page.wait_for_timeout(100)
    out["transcribed"] = page.input_value("#q")
    page.fill("#q", "What is the capital of Japan?")
    page.press("#q", "Enter")
    page.wait_for_selector(".stats", timeout=120_000)
    out["user"] = page.inner_text(".msg.user")
    out["answer"] = page.inner_text(".msg.assistant")
    out["stats"] = page.inner_text(".stats")
    out["page_errors"] = errors
    page.screenshot(path=shot)
    browser.close()
print(json.dumps(out))
