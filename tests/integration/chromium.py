"""Headless Chromium helpers for the sign-in page tests."""

from __future__ import annotations

from http.server import BaseHTTPRequestHandler

from selenium.webdriver.common.by import By

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
