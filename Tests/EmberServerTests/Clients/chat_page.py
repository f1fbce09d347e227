"""Drives Ember's chat page (GET /) in headless Chromium through selenium and prints what the
page showed, as JSON.

Usage: chat_page.py PORT API_KEY. The Swift test (ChatPageTests) checks the values; this script
fails only when the browser cannot be driven or the page never finishes a reply.

The page is used as a person would: type a message and press Enter, once without the API key
(the page must show the server's error), then with the key typed into its field, twice (the
second request must carry the first exchange). A MutationObserver installed in the page records
every text the reply bubble shows while it streams, so the test can see the reply grow piece by
piece rather than appear whole.
"""
import json
import os
import sys
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

port, key = sys.argv[1], sys.argv[2]
base = f"http://127.0.0.1:{port}"
# Debian's chromium and chromium-driver; selenium must not look for (or download) others.
os.environ["SE_OFFLINE"] = "true"
options = webdriver.ChromeOptions()
options.binary_location = os.environ.get("EMBER_CHROMIUM", "/usr/bin/chromium")
for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--no-first-run", "--disable-extensions", "--window-size=1000,800"):
    options.add_argument(argument)
service = Service(executable_path=os.environ.get("EMBER_CHROMEDRIVER", "/usr/bin/chromedriver"))
driver = webdriver.Chrome(options=options, service=service)
driver.set_page_load_timeout(30)
out = {"browser": driver.capabilities.get("browserVersion")}

# Records each distinct text of the newest reply bubble, with the time it appeared.
OBSERVE = """
window.seen = [];
const log = document.getElementById("log");
new MutationObserver(() => {
  const turns = log.querySelectorAll(".turn.assistant, .turn.error");
  if (!turns.length) return;
  const text = turns[turns.length - 1].textContent;
  const seen = window.seen;
  if (!seen.length || seen[seen.length - 1].text !== text) seen.push({ text, at: performance.now() });
}).observe(log, { childList: true, subtree: true, characterData: true });
"""


def wait_for(condition, timeout=60, what="the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise SystemExit(f"chat_page.py: timed out waiting for {what}")


def send(message):
    """Types `message`, presses Enter, waits for the reply to end; returns what the page showed."""
    driver.execute_script(OBSERVE)
    before = len(driver.find_elements(By.CSS_SELECTOR, "#log .turn"))
    box = driver.find_element(By.ID, "prompt")
    box.send_keys(message)
    box.send_keys(Keys.ENTER)
    wait_for(lambda: len(driver.find_elements(By.CSS_SELECTOR, "#log .turn")) >= before + 2, what="the turns")
    # The button is disabled while a reply streams and enabled again when it has ended.
    wait_for(lambda: driver.find_element(By.ID, "send").is_enabled(), what="the reply to end")
    turns = driver.find_elements(By.CSS_SELECTOR, "#log .turn")
    user, reply = turns[-2], turns[-1]
    seen = driver.execute_script("return window.seen;")
    return {
        "user": {"text": user.text, "class": user.get_attribute("class")},
        "reply": {"text": reply.get_attribute("textContent"), "class": reply.get_attribute("class")},
        "prompt_after": box.get_attribute("value"),
        "seen": [entry["text"] for entry in seen],
        "seen_ms": [round(entry["at"] - seen[0]["at"], 1) for entry in seen] if seen else [],
    }


try:
    driver.get(base + "/")
    out["title"] = driver.title
    out["without_key"] = send("Hello")

    # The key field keeps the key in local storage (on change); reload so the page starts with it.
    field = driver.find_element(By.ID, "key")
    field.send_keys(key)
    field.send_keys(Keys.TAB)
    driver.get(base + "/")
    out["model"] = wait_for(lambda: driver.find_element(By.ID, "model").text, timeout=20, what="the model name")
    out["key_field"] = driver.find_element(By.ID, "key").get_attribute("value") == key
    out["first"] = send("Hello")
    out["second"] = send("And again")
    out["turns"] = [turn.get_attribute("class") for turn in driver.find_elements(By.CSS_SELECTOR, "#log .turn")]
finally:
    driver.quit()
print(json.dumps(out))
