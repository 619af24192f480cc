"""The chat page at / in headless Chromium (Debian's chromium + chromium-driver, driven by selenium): type a
question, see the answer arrive in streamed chunks, save a screenshot in the test's tmp dir."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from .server_proc import running_server

webdriver = pytest.importorskip("selenium.webdriver")

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromium-driver (apt-get)")


def test_chat_page_streams_an_answer(smollm2_gguf: Path, tmp_path: Path) -> None:
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,700"):
        opts.add_argument(flag)
    with running_server(smollm2_gguf, "-np", "1", "-c", "1024", log_dir=tmp_path) as server:
        driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
        try:
            driver.get(server.url + "/")
            for field, value in (("temperature", "0"), ("max_tokens", "24")):
                box = driver.find_element(By.ID, field)
                box.clear()
                box.send_keys(value)
            driver.find_element(By.ID, "input").send_keys("What is the capital of France?", Keys.ENTER)
            deadline = time.monotonic() + 300
            seen: set[str] = set()  # the answer's text each time we looked: several while it streams
            while True:
                answer = driver.find_element(By.CSS_SELECTOR, ".msg.assistant, .msg.error")
                seen.add(answer.text)
                if answer.get_attribute("data-done") == "1":
                    break
                assert time.monotonic() < deadline, "no complete answer within 300 s"
                time.sleep(0.05)
            shot = tmp_path / "chat.png"
            driver.save_screenshot(str(shot))
            assert "error" not in answer.get_attribute("class"), answer.text
            assert "Paris" in answer.text
            status = driver.find_element(By.ID, "status").text
            assert int(status.split()[0]) > 3, status  # SSE chunks received, not one blob
            assert driver.find_element(By.ID, "model").text == f"model: {smollm2_gguf.name}"
            assert shot.stat().st_size > 10_000
        finally:
            driver.quit()
