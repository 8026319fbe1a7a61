"""The playground page in a real headless Chromium (Debian's, driven by Playwright) against a real server:
move sliders, submit, and see each pane stream the same text the API gives for that pane's weights."""

from __future__ import annotations

import os
import tempfile

import httpx
import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture()
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} missing: run scripts/ensure-chromium.sh (as root)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with tempfile.TemporaryDirectory(prefix="cmpo-chromium-") as profile, sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                    args=FLAGS)
        try:
            yield ctx
        finally:
            ctx.close()


@pytest.mark.browser
def test_playground_streams_both_settings(server, browser):
    page = browser.pages[0] if browser.pages else browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("body[data-ready='1']", timeout=30_000)
    assert "tiny-plural" in page.inner_text("#model-info")
    # one slider per attribute in each pane
    for side in "ab":
        assert page.locator(f"#sliders-{side} input[type=range]").count() == 3
    page.fill("#w-a-helpfulness", "0")
    page.fill("#w-a-humor", "1.5")
    page.fill("#w-a-safety", "0")
    page.fill("#w-b-helpfulness", "0")
    page.fill("#w-b-humor", "0")
    page.fill("#w-b-safety", "1")
    assert page.inner_text("#v-a-humor") == "1.5"  # the label follows the slider
    page.fill("#prompt", "list two items: bread and milk")
    page.fill("#max-tokens", "16")
    page.click("#submit")
    for side in "ab":
        page.wait_for_function(f"document.getElementById('status-{side}').textContent.startsWith('done')",
                               timeout=60_000)
    shown = {side: page.eval_on_selector(f"#output-{side}", "e => e.textContent") for side in "ab"}
    assert "humor=1.5" in page.inner_text("#status-a") and "safety=1" in page.inner_text("#status-b")

    def api(weights):
        r = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "list two items: bread and milk"}], "max_tokens": 16,
            "temperature": 0, "attribute_weights": weights})
        return r.json()["choices"][0]["message"]["content"]

    assert shown["a"] and shown["b"] and shown["a"] != shown["b"]
    assert shown["a"] == api({"humor": 1.5})
    assert shown["b"] == api({"safety": 1})
