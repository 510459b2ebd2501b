"""Tests for invismap.assets: the asset table, the search path, checked downloads (local HTTP server)."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import socket
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from invismap import assets, cli
from invismap.assets import Asset, fetch, find_asset
from invismap.errors import InvismapError

PAYLOAD = bytes(range(256)) * 300 + b"invismap"  # ~77 kB, several read chunks for small chunk sizes
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, bytes]] = {}
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:  # http.server's name
        self.hits.append(self.path)
        if self.path == "/short":  # announces more bytes than it sends, then closes
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD[:100])
            return
        body = self.routes.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server():
    """Base URL of an HTTP server on 127.0.0.1 (ephemeral port) serving ``_Handler.routes``."""
    _Handler.routes = {"/good.bin": PAYLOAD, "/bad.bin": PAYLOAD[:-1] + b"X"}
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path, monkeypatch):
    """No real search path: empty ``INVISMAP_ASSETS``, cache under ``tmp_path``."""
    monkeypatch.delenv(assets.ENV_VAR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def _asset(url: str, sha: str | None = PAYLOAD_SHA, relpath: str = "weights/tiny.bin") -> Asset:
    return Asset("tiny.bin", relpath, url, sha, "test", len(PAYLOAD), "generated test file")


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the table ------------------------------------------------------------------------------------


def test_table_is_consistent():
    names = [a.name for a in assets.ASSETS]
    assert len(names) == len(set(names))
    for a in assets.ASSETS:
        assets.check_relpath(a.relpath)
        assert a.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", a.sha256), a.name
        if a.kind == "download":
            assert a.url and a.url.startswith("https://"), a.name
        elif a.kind == "derived":
            assert a.url is None and a.note, a.name
        else:
            assert a.relpath == f"data/{a.name}" and a.url and a.sha256 is None, a.name
    assert {"msrs", "roadscene", "llvip", "kaist", "flir", "m3fd"} <= set(names)
    assert assets.get_asset("weights/yolov5n.pt").name == "yolov5n.pt"
    with pytest.raises(InvismapError, match=r"known assets: yolov5n.pt"):
        assets.get_asset("yolov9.pt")


# --- search path ------------------------------------------------------------------------------------


def test_asset_dirs_order(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    monkeypatch.setenv(assets.ENV_VAR, os.pathsep.join([str(a), "", str(b)]))
    assert assets.asset_dirs() == [a, b, tmp_path / "xdg" / "invismap"]
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert assets.asset_dirs()[-1] == Path.home() / ".cache" / "invismap"


def test_find_asset_search_order(tmp_path, monkeypatch):
    a, b, cache = tmp_path / "a", tmp_path / "b", tmp_path / "xdg" / "invismap"
    monkeypatch.setenv(assets.ENV_VAR, os.pathsep.join([str(a), str(b)]))
    for root in (cache, b):
        (root / "weights").mkdir(parents=True)
        (root / "weights" / "coco.names").write_text(str(root))
    assert find_asset("coco.names") == b / "weights" / "coco.names"
    (a / "weights").mkdir(parents=True)
    (a / "weights" / "coco.names").write_text("a")
    assert find_asset("coco.names") == a / "weights" / "coco.names"
    assert find_asset("weights/coco.names") == a / "weights" / "coco.names"
    (b / "data" / "msrs").mkdir(parents=True)
    assert find_asset("msrs") == b / "data" / "msrs"
    (cache / "notes.txt").write_text("x")  # a relpath outside the table is searched too
    assert find_asset("notes.txt") == cache / "notes.txt"


def test_find_asset_missing_says_where_and_how(tmp_path, monkeypatch):
    a = tmp_path / "a"
    monkeypatch.setenv(assets.ENV_VAR, str(a))
    with pytest.raises(InvismapError) as e:
        find_asset("yolov5n.pt")
    msg = str(e.value)
    assert "\n" not in msg
    assert str(a) in msg and str(tmp_path / "xdg" / "invismap") in msg
    assert "invismap assets fetch yolov5n.pt" in msg
    assert str(tmp_path / "xdg" / "invismap" / "weights" / "yolov5n.pt") in msg
    with pytest.raises(InvismapError, match=r"get it from https://github.com/Linfeng-Tang/MSRS"):
        find_asset("msrs")


@pytest.mark.parametrize("bad", ["../etc/passwd", "weights/../../x", "/etc/passwd", "C:\\x", "", "."])
def test_traversal_refused(bad, tmp_path):
    with pytest.raises(InvismapError):
        find_asset(bad, dirs=[tmp_path])
    with pytest.raises(InvismapError):
        fetch(_asset("http://127.0.0.1:1/x", relpath=bad), tmp_path / "dest")
    assert _files(tmp_path) == []


def test_fetch_refuses_traversal_by_name_and_link(tmp_path, server):
    with pytest.raises(InvismapError, match=r"'..' are refused"):
        fetch("../../etc/passwd", tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "weights").symlink_to(outside)  # a link that would carry the download out of dest
    with pytest.raises(InvismapError, match="outside"):
        fetch(_asset(f"{server}/good.bin"), dest)
    assert _files(outside) == []


# --- download -------------------------------------------------------------------------------------


def test_fetch_downloads_and_verifies(tmp_path, server, monkeypatch):
    monkeypatch.setattr(assets, "_CHUNK", 4096)
    dest = tmp_path / "dest"
    path = fetch(_asset(f"{server}/good.bin"), dest, timeout=5)
    assert path == dest / "weights" / "tiny.bin"
    assert path.read_bytes() == PAYLOAD
    assert _files(dest) == [path]  # no temp file left
    assert find_asset("weights/tiny.bin", dirs=[dest]) == path
    n = len(_Handler.hits)
    assert fetch(_asset(f"{server}/good.bin"), dest) == path  # already there and verified: no request
    assert len(_Handler.hits) == n


def test_fetch_into_default_cache_with_mirror_url(tmp_path, server):
    path = fetch(_asset("https://example.invalid/never-used"), url=f"{server}/good.bin")
    assert path == tmp_path / "xdg" / "invismap" / "weights" / "tiny.bin"
    assert path.read_bytes() == PAYLOAD


def test_fetch_replaces_corrupt_existing_copy(tmp_path, server):
    target = tmp_path / "weights" / "tiny.bin"
    target.parent.mkdir()
    target.write_bytes(b"old and wrong")
    assert fetch(_asset(f"{server}/good.bin"), tmp_path).read_bytes() == PAYLOAD


def test_fetch_checksum_mismatch_leaves_nothing(tmp_path, server):
    dest = tmp_path / "dest"
    with pytest.raises(InvismapError, match="sha256") as e:
        fetch(_asset(f"{server}/bad.bin"), dest)
    assert "\n" not in str(e.value) and "nothing was saved" in str(e.value)
    assert _files(dest) == []


def test_fetch_corrupt_does_not_touch_existing_good_copy(tmp_path, server):
    target = tmp_path / "weights" / "tiny.bin"
    target.parent.mkdir()
    target.write_bytes(b"previous")
    with pytest.raises(InvismapError, match="sha256"):
        fetch(_asset(f"{server}/bad.bin"), tmp_path, force=True)
    assert _files(tmp_path) == [target] and target.read_bytes() == b"previous"


def test_fetch_truncated_download(tmp_path, server):
    with pytest.raises(InvismapError, match=r"tiny.bin: download from"):
        fetch(_asset(f"{server}/short", sha=None), tmp_path)
    assert _files(tmp_path) == []


def test_fetch_unknown_sha_saves_with_warning(tmp_path, server, caplog):
    path = fetch(_asset(f"{server}/good.bin", sha=None), tmp_path)
    assert path.read_bytes() == PAYLOAD
    assert "not verified" in caplog.text and PAYLOAD_SHA in caplog.text


def test_fetch_http_error(tmp_path, server):
    with pytest.raises(InvismapError, match="HTTP 404"):
        fetch(_asset(f"{server}/missing.bin"), tmp_path)
    assert _files(tmp_path) == []


def test_fetch_unreachable_is_one_clear_line(tmp_path):
    dest = tmp_path / "dest"
    with pytest.raises(InvismapError) as e:
        fetch(_asset(f"http://127.0.0.1:{_closed_port()}/x.bin"), dest, timeout=2)
    msg = str(e.value)
    assert "\n" not in msg and "cannot reach" in msg
    assert f"put it at {dest / 'weights' / 'tiny.bin'}" in msg  # where to put it by hand
    assert _files(dest) == []


def test_fetch_timeout(tmp_path):
    with socket.socket() as s:  # accepts connections (kernel backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/x.bin"
        with pytest.raises(InvismapError, match="timed out"):
            fetch(_asset(url), tmp_path, timeout=0.3)
    assert _files(tmp_path) == []


def test_fetch_refuses_datasets_derived_and_other_schemes(tmp_path):
    with pytest.raises(InvismapError, match=r"no automatic download.*put it at .*data/msrs"):
        fetch("msrs", tmp_path)
    with pytest.raises(InvismapError, match="no download URL"):
        fetch("yolov5n_state_dict.pt", tmp_path)
    with pytest.raises(InvismapError, match="only http"):
        fetch(_asset("file:///etc/passwd"), tmp_path)
    assert _files(tmp_path) == []


# --- verify, list, CLI ------------------------------------------------------------------------------


def test_verify_real_weights(weights_dir):
    results = {r.asset.name: r for r in assets.verify(dirs=[weights_dir.parent])}
    present = [r for r in results.values() if r.path is not None and not r.asset.is_dataset]
    assert results["yolov5n.pt"].status == "ok"
    assert present and all(r.status in ("ok", "unverified") for r in present), \
        [(r.asset.name, r.status) for r in present]
    for r in present:
        if r.asset.sha256 is not None:
            assert r.actual == r.asset.sha256


def test_verify_reports_mismatch(tmp_path):
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "coco.names").write_text("person\n")
    (tmp_path / "weights" / "yolov3.weights").write_bytes(b"?")
    results = {r.asset.name: r for r in assets.verify(dirs=[tmp_path])}
    assert results["coco.names"].failed
    assert results["yolov3.weights"].status == "unverified"
    assert results["yolov5n.pt"].status == "missing"


def _main(argv, monkeypatch):
    mods = [m for m in cli.STAGE_CLIS if m != "invismap.assets_cli"] + ["invismap.assets_cli"]
    monkeypatch.setattr(cli, "STAGE_CLIS", mods)
    return cli.main(argv)


def test_cli_list_verify_fetch(tmp_path, monkeypatch, capsys, server):
    root = tmp_path / "root"
    (root / "weights").mkdir(parents=True)
    (root / "weights" / "coco.names").write_text("person\n")
    monkeypatch.setenv(assets.ENV_VAR, str(root))
    assert _main(["assets", "list"], monkeypatch) == 0
    out = capsys.readouterr().out
    assert re.search(r"coco\.names\s+present at .*coco\.names", out)
    assert re.search(r"yolov5n\.pt\s+missing\s+GPL-3\.0", out)
    assert _main(["assets", "verify"], monkeypatch) == 1  # the coco.names above is wrong
    assert re.search(r"coco\.names\s+mismatch", capsys.readouterr().out)
    assert _main(["assets", "fetch", "msrs", "--dest", str(tmp_path / "d")], monkeypatch) == 1
    assert "github.com/Linfeng-Tang/MSRS" in capsys.readouterr().out
    assert _main(["assets", "fetch", "../x"], monkeypatch) == 2
    assert "refused" in capsys.readouterr().err
    url = f"http://127.0.0.1:{_closed_port()}/x"
    assert _main(["assets", "fetch", "yolov5n.pt", "--url", url, "--dest", str(tmp_path / "d")],
                 monkeypatch) == 2
    assert "cannot reach" in capsys.readouterr().err
    assert _files(tmp_path / "d") == []
