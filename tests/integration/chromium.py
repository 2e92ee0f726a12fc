"""Headless Chromium helpers for the sign-in page tests."""

from __future__ import annotations

from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler
from typing import Any

from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--window-size=900,1200"]


class CallbackPage(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        CallbackPage.hits.append(self.path)
        body = b"<!DOCTYPE html><title>callback</title><p id=done>Connected. You can close this tab.</p>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def fill(browser, username: str, password: str) -> None:
    browser.find_element(By.ID, "email").send_keys(username)
    browser.find_element(By.ID, "full_name").send_keys("Browser Tester")
    browser.find_element(By.ID, "imap_username").send_keys(username)
    browser.find_element(By.ID, "imap_password").send_keys(password)


class PatientWait(WebDriverWait):  # type: ignore[type-arg]
    """
    A `WebDriverWait` that keeps polling through Chrome's navigation races.
    Asked about the page while a new one loads, Chrome sometimes answers
    with a bare WebDriverException ("aborted by navigation: Inspected target
    navigated or closed", "Node with given id does not belong to the
    document") instead of a no-such-element or stale-element error; each
    failed CI once.  A condition that never holds still ends the wait with
    a TimeoutException.
    """

    def __init__(self, driver: Any, timeout: float, poll_frequency: float = 0.5,
                 ignored_exceptions: Iterable[type[Exception]] | None = None) -> None:
        super().__init__(driver, timeout, poll_frequency,
                         ignored_exceptions=(WebDriverException, *(ignored_exceptions or ())))

