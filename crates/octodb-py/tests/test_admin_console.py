"""The admin console in a real browser (issue 24): a Python backend serves it with admin=;
headless Chromium logs in, clicks "approve as new user" for a waiting device, and watches the
device become ready. The screenshot is saved as target/admin-console.png."""

import json
import pathlib
import shutil

import pytest

import octodb
from conftest import wait_until

SCREENSHOT = pathlib.Path(__file__).resolve().parents[3] / "target" / "admin-console.png"


def _browser():
    """Headless Chromium through chromedriver, both Debian's; skip (saying why) without them."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (scripts/python-env installs it)"
    )
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("Debian's chromium and chromium-driver are not installed (.ci/run installs them)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1300,1400"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def test_the_console_approves_a_waiting_device_by_clicking(tmp_path, open_device):
    backend = octodb.connect(
        f"file:{tmp_path / 'backend.db'}?node=primary&bind=tcp://127.0.0.1:0&auth=user"
        "&admin=127.0.0.1:0",
        uri=True,
    )
    try:
        backend.execute("CREATE TABLE notes(id INTEGER PRIMARY KEY, body TEXT, row_owner)")
        # The backend leaves sign-ups to the operator: they wait (-2) for a decision.
        backend.register_function("user_signup", 2, lambda data, info: -2)
        url = backend.execute("PRAGMA admin_address").fetchone()[0]
        token = backend.execute("PRAGMA admin_token").fetchone()[0]
        assert url.startswith("http://127.0.0.1:") and len(token) == 64

        phone = open_device(backend)
        phone.execute("PRAGMA user_signup='" + json.dumps({"name": "ann"}) + "'")
        wait_until("the sign-up to wait", lambda: phone.sync_status()["auth_state"] == "pending")
        key = phone.sync_status()["public_key"]

        browser = _browser()
        try:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support.ui import WebDriverWait

            wait = WebDriverWait(browser, 60)
            browser.get(url)
            # Without the token: the login form (served with 401).
            browser.find_element(By.ID, "token").send_keys(token)
            browser.find_element(By.ID, "login").click()
            approve = wait.until(
                lambda b: b.find_element(
                    By.CSS_SELECTOR, f'button.approve-new[data-key="{key}"]'
                )
            )
            approve.click()
            wait_until("the approved device to be ready", lambda: phone.sync_status()["db_is_ready"])
            phone.execute("INSERT INTO notes(body) VALUES ('hello from the phone')")
            # The page updates by itself (server-sent events): the device shows online, no
            # request waits any more, and the action is in the journal.
            wait.until(lambda b: "online" in b.find_element(By.ID, "devices").text)
            wait.until(lambda b: "none" in b.find_element(By.ID, "waiting").text)
            wait.until(lambda b: "authorize_user" in b.find_element(By.ID, "actions").text)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            assert browser.save_screenshot(str(SCREENSHOT))
            assert browser.save_screenshot(str(tmp_path / "admin-console.png"))
        finally:
            browser.quit()
    finally:
        backend.close()
