"""
What the subprocess MCP clients that sign in through Chromium share
(``oauth_url_client.py``, ``scopes_mcp_client.py``): the headless browser
and the loopback page the authorization server redirects to.  They run as
scripts, so this module is imported from their own folder.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

from selenium import webdriver
from selenium.webdriver.chrome.service import Service as ChromeService

CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run"]


class CallbackPage(BaseHTTPRequestHandler):
    """The client's redirect URI: a page with ``#done`` the browser waits for."""

    def do_GET(self) -> None:  # noqa: N802
        body = b"<!DOCTYPE html><title>callback</title><p id=done>Connected.</p>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def chromium(height: int = 1200) -> webdriver.Chrome:
    """Debian's headless Chromium, 900 pixels wide."""
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in [*CHROME_FLAGS, f"--window-size=900,{height}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=ChromeService("/usr/bin/chromedriver"), options=options)
    driver.set_page_load_timeout(30)
    return driver


def serve_callback() -> tuple[HTTPServer, str]:
    """Serve `CallbackPage` on a free loopback port (daemon thread): the server and its redirect URI."""
    server = HTTPServer(("127.0.0.1", 0), CallbackPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/callback"
