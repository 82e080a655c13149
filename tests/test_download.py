"""data/download.py against a local HTTP server (no real network): resume, checksums, safe extraction."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import stat
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SR, noise_like, speech_like

import utils
from data import download


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files from `root`, honouring `Range: bytes=N-` unless `ranges` is off; logs requests."""

    root: Path
    ranges = True
    content_range_416 = True  # a 416 reply says `Content-Range: bytes */SIZE` (RFC 9110 says it should)
    log: list

    def do_GET(self):  # noqa: N802 (http.server's naming)
        path = self.root / self.path.lstrip("/")
        self.log.append((self.path, self.headers.get("Range")))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and self.ranges:
            start = int(match.group(1))
            if start >= len(data):
                self.send_response(416)
                if self.content_range_416:
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            data = data[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = type(
        "Handler", (RangeHandler,), {"root": root, "log": [], "ranges": True, "content_range_416": True}
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, handler
    httpd.shutdown()
    httpd.server_close()


def wav_bytes(x: np.ndarray, fmt: str = "WAV") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, SR, format=fmt, subtype="PCM_16")
    return buf.getvalue()


def make_tar(
    path: Path, members: dict[str, bytes], links: dict[str, tuple[str, bytes]] | None = None
) -> bytes:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, (target, kind) in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, target
            tar.addfile(info)
    return path.read_bytes()


def librispeech_tar(path: Path, subset: str = "test-clean") -> bytes:
    return make_tar(path, {
        f"LibriSpeech/{subset}/19/198/19-198-0000.flac": wav_bytes(speech_like(1.0, 1), "FLAC"),
        f"LibriSpeech/{subset}/19/198/19-198.trans.txt": b"19-198-0000 HELLO\n",
        "LibriSpeech/LICENSE.TXT": b"CC BY 4.0\n",
    })  # fmt: skip


def msnsd_zip(path: Path) -> bytes:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("MS-SNSD-master/noise_train/AirConditioner_1.wav", wav_bytes(noise_like(1.0, 1)))
        zf.writestr("MS-SNSD-master/noise_test/Babble_1.wav", wav_bytes(noise_like(1.0, 2)))
        zf.writestr("MS-SNSD-master/clean_train/not_wanted.wav", wav_bytes(speech_like(1.0, 3)))
        zf.writestr("MS-SNSD-master/README.md", b"readme")
    return path.read_bytes()


def dl_args(tmp_path: Path, url: str, *extra: str) -> list[str]:
    data = tmp_path / "data"
    sets = {"clean_train_path": data / "clean/train", "clean_test_path": data / "clean/test",
            "noise_train_path": data / "noise/train", "noise_test_path": data / "noise/test"}  # fmt: skip
    return [
        *[a for k, v in sets.items() for a in ("--set", f"data.{k}={v}")],
        "--base-url", url, "--msnsd-url", f"{url}/master.zip", "--downloads", str(tmp_path / "dl"), *extra,
    ]  # fmt: skip


def test_downloads_and_extracts_into_the_config_folders(server, tmp_path, capsys):
    url, www, handler = server
    archive = librispeech_tar(www / "test-clean.tar.gz")
    msnsd_zip(www / "master.zip")
    md5 = hashlib.md5(archive).hexdigest()
    args = dl_args(tmp_path, url, "--subsets", "test-clean", "--md5", f"test-clean={md5}")
    assert utils.run_main(download.main, args) == 0
    data = tmp_path / "data"
    flac = data / "clean/test/test-clean/19/198/19-198-0000.flac"
    assert sf.info(str(flac)).samplerate == SR
    assert (data / "noise/train/AirConditioner_1.wav").is_file()
    assert (data / "noise/test/Babble_1.wav").is_file()
    assert not list(data.rglob("not_wanted.wav")) and not list(data.rglob("README.md"))
    assert "no checksum known" in capsys.readouterr().out  # the zip has none and none was given
    requests = len(handler.log)
    assert utils.run_main(download.main, args) == 0  # complete: nothing is downloaded again
    assert len(handler.log) == requests
    assert "already in" in capsys.readouterr().out


def test_resumes_a_partial_download(server, tmp_path):
    url, www, handler = server
    archive = librispeech_tar(www / "dev-clean.tar.gz", "dev-clean")
    dest = tmp_path / "dl" / "dev-clean.tar.gz"
    dest.parent.mkdir()
    half = len(archive) // 2
    (dest.parent / "dev-clean.tar.gz.part").write_bytes(archive[:half])
    download.fetch(f"{url}/dev-clean.tar.gz", dest, hashlib.md5(archive).hexdigest(), progress=False)
    assert handler.log == [("/dev-clean.tar.gz", f"bytes={half}-")]
    assert dest.read_bytes() == archive
    assert not (dest.parent / "dev-clean.tar.gz.part").exists()


def test_server_without_range_support_restarts(server, tmp_path):
    url, www, handler = server
    handler.ranges = False
    archive = librispeech_tar(www / "dev-clean.tar.gz", "dev-clean")
    dest = tmp_path / "dev-clean.tar.gz"
    (tmp_path / "dev-clean.tar.gz.part").write_bytes(b"stale bytes from another file")
    download.fetch(f"{url}/dev-clean.tar.gz", dest, progress=False)
    assert dest.read_bytes() == archive


def test_checksum_mismatch_is_a_clear_error(server, tmp_path, capsys):
    url, www, _ = server
    librispeech_tar(www / "test-clean.tar.gz")
    args = dl_args(tmp_path, url, "--subsets", "test-clean", "--no-noise", "--md5", f"test-clean={'0' * 32}")
    assert utils.run_main(download.main, args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "md5 mismatch" in err and "0" * 32 in err
    assert not list((tmp_path / "dl").iterdir())  # the corrupt download is gone
    assert not (tmp_path / "data").exists()  # and nothing was extracted


def test_built_in_checksums_are_used():
    assert set(download.LIBRISPEECH) == {"dev-clean", "test-clean", "train-clean-100", "train-clean-360"}
    for _, md5 in download.LIBRISPEECH.values():
        assert re.fullmatch(r"[0-9a-f]{32}", md5)
    cfg = utils.load_config(utils.DATA_CONFIG)
    (arch,) = download.plan(cfg, ["test-clean"], False, "http://x", "http://y", {})
    assert arch.md5 == download.LIBRISPEECH["test-clean"][1]
    assert arch.url == "http://x/test-clean.tar.gz"


@pytest.mark.parametrize(
    "member",
    ["LibriSpeech/test-clean/../../../evil.txt", "/tmp/evil.txt", "LibriSpeech/test-clean/..\\..\\evil.txt"],
)
def test_tar_path_traversal_is_rejected(tmp_path, member):
    archive = tmp_path / "bad.tar.gz"
    make_tar(archive, {"LibriSpeech/test-clean/ok.txt": b"ok", member: b"evil"})
    target = tmp_path / "out" / "test-clean"
    with pytest.raises(utils.PipelineError, match="refusing"):
        download.extract_tar(archive, {"test-clean": str(target)}, progress=False)
    assert not list(tmp_path.rglob("evil.txt"))


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE])
@pytest.mark.parametrize("link", ["/etc/passwd", "../../../../etc/passwd", "../LICENSE.TXT"])
def test_tar_links_pointing_outside_are_rejected(tmp_path, kind, link):
    archive = tmp_path / "bad.tar.gz"
    make_tar(archive, {"LibriSpeech/test-clean/ok.txt": b"ok", "LibriSpeech/LICENSE.TXT": b"x"},
             {"LibriSpeech/test-clean/link": (link, kind)})  # fmt: skip
    with pytest.raises(utils.PipelineError, match="refusing"):
        download.extract_tar(archive, {"test-clean": str(tmp_path / "out")}, progress=False)
    assert not (tmp_path / "out" / "link").exists()


def test_tar_links_inside_are_kept(tmp_path):
    archive = tmp_path / "ok.tar.gz"
    make_tar(archive, {"LibriSpeech/test-clean/a/x.txt": b"x"},
             {"LibriSpeech/test-clean/b/y.txt": ("../a/x.txt", tarfile.SYMTYPE)})  # fmt: skip
    download.extract_tar(archive, {"test-clean": str(tmp_path / "out")}, progress=False)
    assert (tmp_path / "out" / "b" / "y.txt").read_bytes() == b"x"


def test_zip_path_traversal_is_rejected_before_writing(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("MS-SNSD-master/noise_train/ok.wav", b"ok")
        zf.writestr("MS-SNSD-master/noise_train/../../../evil.wav", b"evil")
    with pytest.raises(utils.PipelineError, match="refusing"):
        download.extract_zip(archive, {"noise_train": str(tmp_path / "out")}, progress=False)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.rglob("evil.wav"))


def test_http_errors_are_one_line(server, tmp_path):
    url, _, _ = server
    with pytest.raises(utils.PipelineError, match="HTTP 404"):
        download.fetch(f"{url}/missing.tar.gz", tmp_path / "missing.tar.gz", progress=False)


def test_zip_symlinks_are_rejected(tmp_path):
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        info = zipfile.ZipInfo("MS-SNSD-master/noise_train/link.wav")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(utils.PipelineError, match="refusing"):
        download.extract_zip(archive, {"noise_train": str(tmp_path / "out")}, progress=False)
    assert not (tmp_path / "out").exists()


def test_416_with_a_complete_part_file_is_accepted(server, tmp_path):
    url, www, handler = server
    archive = librispeech_tar(www / "dev-clean.tar.gz", "dev-clean")
    dest = tmp_path / "dev-clean.tar.gz"
    (tmp_path / "dev-clean.tar.gz.part").write_bytes(archive)  # complete, but not yet renamed
    download.fetch(f"{url}/dev-clean.tar.gz", dest, progress=False)
    assert handler.log == [("/dev-clean.tar.gz", f"bytes={len(archive)}-")]  # nothing downloaded again
    assert dest.read_bytes() == archive


@pytest.mark.parametrize(
    "extra,content_range",
    [(b"bytes of some other, longer file", True), (b"", False)],
    ids=["longer-part", "no-content-range"],
)
def test_416_without_a_matching_size_restarts(server, tmp_path, extra, content_range):
    """A .part longer than the file (another file's, or the file changed) must not be taken as complete:
    without an md5 nothing else would notice. No Content-Range: the size is unknown, so restart too."""
    url, www, handler = server
    handler.content_range_416 = content_range
    archive = librispeech_tar(www / "dev-clean.tar.gz", "dev-clean")
    dest = tmp_path / "dev-clean.tar.gz"
    (tmp_path / "dev-clean.tar.gz.part").write_bytes(archive + extra)
    download.fetch(f"{url}/dev-clean.tar.gz", dest, progress=False)
    assert dest.read_bytes() == archive
    assert [r for _, r in handler.log] == [f"bytes={len(archive + extra)}-", None]  # then from the start
    assert not (tmp_path / "dev-clean.tar.gz.part").exists()
