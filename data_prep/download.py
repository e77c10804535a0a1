"""Fetch item images from URLs into a folder: parallel, retried with backoff, resumable, atomic per file.

A file already in the folder that Pillow can identify is kept (that is the cache and the resume point).
A failed download is counted and listed, never fatal: the item simply has no image (the image policy and
--require-image decide what that means). Only `http` and `https` URLs are fetched, redirects included: a
`file://` URL in a dataset file must not copy a local file into the dataset. Only the standard library is used.
"""
from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from mmrec.io import atomic_path
from mmrec.progress import get_logger, progress

log = get_logger("mmrec.download")

MAX_LISTED_FAILURES = 1000  # stats.json lists at most this many failed items (all are counted)
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
UNREACHABLE_AFTER = 16  # this many network failures before any success: stop, the network is not there
SCHEMES = ("http", "https")


def _check_scheme(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in SCHEMES:
        raise ValueError(f"refused: only http and https URLs are downloaded, not {scheme or 'a URL without scheme'!r}")


class _HttpRedirectsOnly(urllib.request.HTTPRedirectHandler):
    """urllib follows redirects to ftp:// by itself; refuse every scheme but http(s)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        _check_scheme(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpRedirectsOnly)


class _Breaker:
    """Stops a large download early when the network is unreachable, instead of retrying every file for hours."""

    def __init__(self, threshold: int):
        self.threshold, self.failures, self.successes = threshold, 0, 0
        self._lock = threading.Lock()

    def record(self, ok: bool) -> None:
        with self._lock:
            self.successes += ok
            self.failures += not ok

    @property
    def open(self) -> bool:
        return self.successes == 0 and self.failures >= self.threshold


@dataclass
class DownloadReport:
    downloaded: int = 0
    cached: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # key -> reason

    def as_stats(self) -> dict:
        listed = dict(sorted(self.failed.items())[:MAX_LISTED_FAILURES])
        return {"downloaded": self.downloaded, "cached": self.cached, "failed": len(self.failed),
                "failures": listed, "failures_listed": len(listed)}


def _is_image(path: Path) -> bool:
    try:
        if path.stat().st_size == 0:
            return False
        with Image.open(path) as img:
            img.verify()
        return True
    except Exception:  # any unreadable file is simply fetched again
        return False


def _fetch(url: str, dest: Path, retries: int, backoff: float, timeout: float, breaker: _Breaker) -> str | None:
    """Download `url` to `dest` atomically; None on success, else the reason it failed."""
    reason = "not attempted"
    try:
        _check_scheme(url)
    except ValueError as e:
        return str(e)
    for attempt in range(retries + 1):
        if breaker.open:
            stopped = f"the first {breaker.threshold} downloads all failed (network unreachable?)"
            return f"{reason}; retries stopped: {stopped}" if attempt else f"not attempted: {stopped}"
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "mmrec-prep/1.0"})
            with _OPENER.open(req, timeout=timeout) as resp, atomic_path(dest) as tmp:
                with open(tmp, "wb") as f:
                    while block := resp.read(1 << 16):
                        f.write(block)
                if not _is_image(tmp):
                    raise ValueError("the server did not send a readable image")
            breaker.record(True)
            return None
        except urllib.error.HTTPError as e:
            breaker.record(True)  # the server answered: the network is there
            reason = f"HTTP {e.code}"
            if e.code not in RETRY_STATUS:
                return reason
        except (urllib.error.URLError, socket.timeout, ConnectionError, TimeoutError) as e:
            breaker.record(False)
            reason = f"network error: {getattr(e, 'reason', e)}"
        except ValueError as e:  # a bad URL or a response that is not an image: retrying will not help
            return str(e)
    return f"{reason} (after {retries + 1} attempts)"


def download_images(jobs: dict[str, tuple[str, Path]], workers: int = 8, retries: int = 3, backoff: float = 0.5,
                    timeout: float = 30.0, unreachable_after: int = UNREACHABLE_AFTER
                    ) -> tuple[dict[str, Path], DownloadReport]:
    """`jobs`: key -> (url, destination file). Returns key -> file for every image now present, and a report.

    After `unreachable_after` network failures without a single answer from any server, the remaining
    downloads are not attempted (reported as such), so an offline machine fails fast instead of retrying.
    """
    breaker = _Breaker(unreachable_after)
    report = DownloadReport()
    present: dict[str, Path] = {}
    todo: dict[str, tuple[str, Path]] = {}
    for key, (url, dest) in jobs.items():
        if dest.is_file() and _is_image(dest):
            present[key] = dest
            report.cached += 1
        else:
            todo[key] = (url, dest)
    if todo:
        next(iter(todo.values()))[1].parent.mkdir(parents=True, exist_ok=True)
        with ThreadPoolExecutor(max(1, workers)) as pool:
            futures = {pool.submit(_fetch, url, dest, retries, backoff, timeout, breaker): key
                       for key, (url, dest) in todo.items()}
            for fut in progress(as_completed(futures), total=len(futures), desc="download", unit="img"):
                key = futures[fut]
                reason = fut.result()
                if reason is None:
                    present[key] = todo[key][1]
                    report.downloaded += 1
                else:
                    report.failed[key] = f"{todo[key][0]}: {reason}"
    if report.failed:
        example = next(iter(sorted(report.failed.items())))
        log.warning("%d image downloads failed (e.g. %s -> %s); they are listed in stats.json",
                    len(report.failed), *example)
    return present, report
