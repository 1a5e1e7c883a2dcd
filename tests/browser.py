"""Headless Chromium, offline, for the tests of the built book and slides (tests/test_book.py, tests/test_slides.py).

`offline_chrome()` starts Chromium with the network switched off (DevTools' offline emulation) and every request
logged, so a page that asks for anything beyond the machine fails to get it and `requests_leaving(driver)` names it.
"""

import json
import shutil
from urllib.parse import unquote, urlparse
from pathlib import Path

CHROMIUM = [shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")]
CHROMEDRIVER = shutil.which("chromedriver")
LOCAL_SCHEMES = {"file", "data", "blob", "about", "chrome", "chrome-extension", "devtools"}


def skip_reason() -> str | None:
    if not any(CHROMIUM) or CHROMEDRIVER is None:
        return "no Chromium: `make chromium` (apt-get install -y chromium chromium-driver) to run the browser tests"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed: `pip install -c constraints.txt -e .[test]`"
    return None


def offline_chrome(width: int = 1280, height: int = 900):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = next(b for b in CHROMIUM if b)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--allow-file-access-from-files",
                "--disable-background-networking", "--disable-component-update", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    # An explicit driver path: selenium then never runs Selenium Manager, which would try to download one.
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions",
                           {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})
    return driver


def requests_leaving(driver) -> list[str]:
    """The URLs the pages asked for that are not on this machine (since the last call)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            url = message["params"]["request"]["url"]
            if urlparse(url).scheme not in LOCAL_SCHEMES:
                urls.append(url)
    return urls


def file_of(url: str) -> Path:
    return Path(unquote(urlparse(url).path))


def broken_images(driver) -> list[str]:
    """The <img> of the current page that did not load (waits for them first)."""
    return driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const imgs = Array.from(document.images);
        Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })))
          .then(() => done(imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)));
    """)


def broken_local_links(driver) -> list[str]:
    """The links of the current page to a file of the site that is not there."""
    hrefs = driver.execute_script("return Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
    return sorted({h for h in hrefs if urlparse(h).scheme == "file" and not file_of(h).exists()})
