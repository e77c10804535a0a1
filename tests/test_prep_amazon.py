"""`mmrec prep amazon2023` on gzipped JSONL fixtures in the real Amazon Reviews 2023 format, plus downloads
from a local HTTP server (some images, some 404s and 500s)."""
from __future__ import annotations

import gzip
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from data_prep.download import download_images
from mmrec.data.canonical import load_dataset


def review(user: str, item: str, ts: int, rating: float = 5.0) -> dict:
    return {"rating": rating, "title": "ok", "text": "fine", "images": [], "asin": item + "-v", "parent_asin": item,
            "user_id": user, "timestamp": ts, "helpful_vote": 0, "verified_purchase": True}


def meta(item: str, title: str, url: str | None = None) -> dict:
    images = [{"thumb": "t", "large": url, "variant": "MAIN", "hi_res": None}] if url else []
    return {"main_category": "Baby", "title": title, "average_rating": 4.5, "rating_number": 3,
            "features": ["Soft", "Washable"], "description": ["A nice thing."], "price": None, "images": images,
            "videos": [], "store": "S", "categories": [], "details": {"Color": "red"}, "parent_asin": item,
            "bought_together": None}


def write_jsonl_gz(path: Path, rows: list, extra_lines: list[str] = ()) -> Path:
    lines = [json.dumps(r) for r in rows] + list(extra_lines)
    with gzip.open(path, "wt") as f:
        f.write("\n".join(lines) + "\n")
    return path


def png_bytes(color=(255, 0, 0)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 6), color).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def server():
    """A local HTTP server: /ok*.png images, /missing.png 404, /broken.png 500 twice then an image, /down 500."""
    hits: dict[str, int] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            hits[self.path] = hits.get(self.path, 0) + 1
            if self.path.startswith("/to-"):  # /to-ftp, /to-file: a redirect to another scheme
                self.send_response(302)
                self.send_header("Location", {"/to-ftp": "ftp://127.0.0.1:1/x.png", "/to-file": "file:///etc/hosts"}
                                 [self.path])
                self.end_headers()
            elif self.path.startswith("/ok") or (self.path == "/flaky.png" and hits[self.path] > 2):
                body = png_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self.send_error(404 if self.path == "/missing.png" else 500)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    httpd.shutdown()
    httpd.server_close()


def fixture_files(tmp_path: Path, base: str = "http://127.0.0.1:9") -> tuple[Path, Path]:
    reviews = [review("U1", "A", 1_600_000_000_123), review("U1", "B", 1_600_000_100_999),
               review("U2", "A", 1_600_000_000_500, 3.0), review("U2", "C", 1_600_000_200_000),
               review("U1", "A", 1_600_000_000_123)]  # exact duplicate
    metas = [meta("A", "Bottle", f"{base}/okA.jpg"), meta("B", "Blanket", f"{base}/missing.png"),
             meta("C", "Crib", f"{base}/flaky.png"), meta("Z", "Never reviewed", f"{base}/okZ.jpg")]
    return (write_jsonl_gz(tmp_path / "Baby_Products.jsonl.gz", reviews),
            write_jsonl_gz(tmp_path / "meta_Baby_Products.jsonl.gz", metas))


def test_local_images_and_ms_timestamps(tmp_path, run_cli, caplog):
    r, m = fixture_files(tmp_path)
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "A.png").write_bytes(png_bytes())
    (imgs / "B.jpg").write_bytes(b"")  # zero-byte: skipped by the default policy, counted
    code, out, err = run_cli("prep", "amazon2023", "--reviews", r, "--meta", m, "--images", imgs,
                             "--out", tmp_path / "d")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["dropped"]["duplicates"] == 1 and stats["images"]["skipped"] == {"empty": 1}
    assert "B.jpg: image file is empty" in caplog.text  # the log line names the file
    ds = load_dataset(tmp_path / "d")
    assert ds.interactions["timestamp"].tolist()[:2] == [1_600_000_000, 1_600_000_100]  # ms -> s, floored
    items = ds.items.set_index("item_id")
    assert items.at["A", "text"] == "Bottle. A nice thing.; Soft; Washable"
    assert items.at["A", "image"].endswith(".png") and items["image"].notna().sum() == 1
    assert "Z" not in items.index


def test_download_from_local_server(tmp_path, run_cli, server):
    base, hits = server
    r, m = fixture_files(tmp_path, base)
    imgs = tmp_path / "imgs"
    args = ["prep", "amazon2023", "--reviews", r, "--meta", m, "--images", imgs, "--download",
            "--retry-backoff", "0.01", "--out", tmp_path / "d"]
    code, out, err = run_cli(*args)
    assert code == 0, err
    stats = json.loads(out)
    assert stats["download"]["downloaded"] == 2 and stats["download"]["failed"] == 1
    assert "HTTP 404" in stats["download"]["failures"]["B"]
    assert sorted(p.name for p in imgs.iterdir()) == ["A.jpg", "C.png"]
    assert hits["/flaky.png"] == 3 and hits["/missing.png"] == 1 and "/okZ.jpg" not in hits
    assert load_dataset(tmp_path / "d").stats["items_with_image"] == 2
    # a re-run finds the downloaded files in --images: only the failed image is asked for again
    code, out, err = run_cli(*args, "--require-image")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["download"]["downloaded"] == 0 and stats["download"]["failed"] == 1
    assert hits["/okA.jpg"] == 1 and hits["/missing.png"] == 2 and stats["dropped"]["no_usable_image"] == 1
    assert set(load_dataset(tmp_path / "d").items["item_id"]) == {"A", "C"}


def test_download_report_never_fatal(tmp_path, server):
    base, _ = server
    jobs = {"a": (f"{base}/ok1.png", tmp_path / "a.png"), "b": (f"{base}/down", tmp_path / "b.png"),
            "c": ("http://127.0.0.1:1/refused.png", tmp_path / "c.png"), "d": ("notaurl", tmp_path / "d.png")}
    present, report = download_images(jobs, workers=2, retries=1, backoff=0.01, timeout=5)
    assert set(present) == {"a"} and report.downloaded == 1
    assert "HTTP 500 (after 2 attempts)" in report.failed["b"] and "network error" in report.failed["c"]
    assert "only http and https" in report.failed["d"]
    assert not (tmp_path / "b.png").exists()  # no partial file left behind
    (tmp_path / "e.png").write_bytes(b"truncated")  # present but invalid: fetched again
    present, report = download_images({"a": jobs["a"], "e": (f"{base}/ok2.png", tmp_path / "e.png")}, backoff=0.01)
    assert report.cached == 1 and report.downloaded == 1 and set(present) == {"a", "e"}


def test_download_is_http_only(tmp_path, server, run_cli):
    """A meta URL (or a redirect) to file://, ftp:// or data: is refused, so a dataset file cannot pull local files."""
    base, _ = server
    local = tmp_path / "local.png"
    local.write_bytes(png_bytes())
    urls = {"file": local.as_uri(), "ftp": "ftp://127.0.0.1:1/x.png", "data": "data:image/png;base64,AAAA",
            "to-ftp": f"{base}/to-ftp", "to-file": f"{base}/to-file"}
    jobs = {k: (url, tmp_path / "out" / f"{k}.png") for k, url in urls.items()}
    present, report = download_images(jobs, workers=1, retries=0, backoff=0.01, timeout=5)
    assert present == {}
    for key in ("file", "ftp", "data", "to-ftp"):
        assert "only http and https" in report.failed[key], report.failed[key]
    assert "HTTP 302" in report.failed["to-file"]  # urllib itself never redirects to file://
    r, m = fixture_files(tmp_path, base)
    metas = [meta("A", "Bottle", local.as_uri()), meta("B", "Blanket", f"{base}/ok.png"), meta("C", "Crib")]
    m = write_jsonl_gz(tmp_path / "meta_Baby_Products.jsonl.gz", metas)
    code, out, err = run_cli("prep", "amazon2023", "--reviews", r, "--meta", m, "--images", tmp_path / "imgs",
                             "--download", "--out", tmp_path / "d")
    assert code == 0, err
    stats = json.loads(out)
    assert stats["download"]["downloaded"] == 1 and "only http and https" in stats["download"]["failures"]["A"]
    assert load_dataset(tmp_path / "d").image_path("A") is None


def test_bad_json_line_named_or_skipped(tmp_path, run_cli, caplog):
    r, m = fixture_files(tmp_path)
    write_jsonl_gz(r, [review("U1", "A", 1), review("U2", "A", 2)],
                   ['{"user_id": "U3", "parent_asin": "A", "timestamp": "soon"}', '{"user_id": "U4", '])
    code, _, err = run_cli("prep", "amazon2023", "--reviews", r, "--meta", m, "--out", tmp_path / "d")
    assert code == 2 and "Baby_Products.jsonl.gz, line 3: field 'timestamp' is 'soon', not a number" in err
    assert not (tmp_path / "d").exists() and not list(tmp_path.glob(".d.*"))
    code, out, err = run_cli("prep", "amazon2023", "--reviews", r, "--meta", m, "--bad-lines", "skip",
                             "--out", tmp_path / "d")
    assert code == 0, err
    assert (json.loads(out)["dropped"]["bad_lines"] == {"Baby_Products.jsonl.gz": 2}
            and "line 4: invalid JSON" in caplog.text)


def test_missing_field_and_unknown_item(tmp_path, run_cli):
    r, m = fixture_files(tmp_path)
    bad = write_jsonl_gz(tmp_path / "wrong.jsonl.gz", [{"user": "U1", "asin": "A", "time": 1}])
    code, _, err = run_cli("prep", "amazon2023", "--reviews", bad, "--meta", m, "--out", tmp_path / "d")
    assert (code == 2
            and "wrong.jsonl.gz: field 'user_id' is missing (line 1 has fields ['asin', 'time', 'user'])" in err)
    write_jsonl_gz(r, [review("U1", "A", 1), review("U1", "Q", 2)])
    code, _, err = run_cli("prep", "amazon2023", "--reviews", r, "--meta", m, "--out", tmp_path / "d")
    assert code == 2 and "line 2: item 'Q' is not in" in err
    (tmp_path / "empty.jsonl").write_text("")
    code, _, err = run_cli("prep", "amazon2023", "--reviews", tmp_path / "empty.jsonl", "--meta", m,
                           "--out", tmp_path / "d")
    assert code == 2 and "empty.jsonl: reviews file is empty" in err


def test_truncated_gzip_is_a_clear_error(tmp_path, run_cli):
    r, m = fixture_files(tmp_path)
    data = r.read_bytes()
    r.write_bytes(data[: len(data) - 12])  # the download was cut short
    code, _, err = run_cli("prep", "amazon2023", "--reviews", r, "--meta", m, "--out", tmp_path / "d")
    assert code == 2 and "Baby_Products.jsonl.gz: cannot be read" in err and "is the file complete?" in err


def test_unreachable_network_fails_fast(tmp_path):
    jobs = {f"k{i}": (f"http://127.0.0.1:1/{i}.png", tmp_path / f"{i}.png") for i in range(10)}
    present, report = download_images(jobs, workers=1, retries=5, backoff=0.01, unreachable_after=3)
    assert present == {} and len(report.failed) == 10
    reasons = sorted(report.failed.values())
    assert sum("not attempted" in r for r in reasons) >= 6 and sum("network error" in r for r in reasons) >= 1
