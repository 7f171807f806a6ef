"""The README's picture of the web chat: serve a checkpoint, ask it questions in Debian's chromium, unfold the first
reply's thinking, and save a screenshot.

    python scripts/web_chat_screenshot.py --checkpoint checkpoints/miniaxion-0.9m --out docs/web-chat.png \
        --ask "What is 47 + 38?" --ask "Sort ascending: 42, 7, 19, 3"
"""

import argparse
import socket
import subprocess
import sys
import time

import httpx
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait


def finished(page) -> int:
    """Replies that have ended: each then says '<n> tokens, mean <x> recurrences per token (<reason>)'."""
    return sum(" tokens, mean " in m.text for m in page.find_elements(By.CSS_SELECTOR, ".meta"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--ask", action="append", required=True, help="a question (repeatable)")
    args = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "recurlm.cli", "serve", "--checkpoint", args.checkpoint, "--port", str(port)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1000,720"):
        options.add_argument(flag)
    page = None
    try:
        for _ in range(120):
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        page = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        page.get(url + "/")
        wait = WebDriverWait(page, 120)
        wait.until(lambda b: b.find_element(By.ID, "model").text != "recurlm")
        for i, question in enumerate(args.ask, 1):
            page.find_element(By.ID, "text").send_keys(question + "\n")
            wait.until(lambda b, i=i: finished(b) >= i)
        summaries = page.find_elements(By.CSS_SELECTOR, "details.thinking summary")
        if summaries:
            summaries[0].click()  # the first reply's thinking unfolded, the others folded as they end
        page.save_screenshot(args.out)
        print(f"wrote {args.out}")
    finally:
        if page is not None:
            page.quit()
        server.terminate()


if __name__ == "__main__":
    main()
