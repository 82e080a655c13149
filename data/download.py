"""Downloads public corpora for real training: LibriSpeech (openslr.org/12) and MS-SNSD noise.

    make data                                   # = python data/download.py
    python data/download.py --subsets dev-clean test-clean --no-noise

Where things go (folders from data/config.ini [data], overridable with --set data.KEY=PATH):
  train-clean-100, train-clean-360, dev-clean  ->  clean_train_path/<subset>/<speaker>/<chapter>/*.flac
  test-clean                                   ->  clean_test_path/test-clean/...
  MS-SNSD noise_train/, noise_test/            ->  noise_train_path/, noise_test_path/
(dev-clean, 5.4 h, is a small training set for quick experiments; train-clean-100 is the usual one.)

Downloads resume (HTTP Range on a .part file), archives are checked against the MD5 sums openslr
publishes (MS-SNSD's GitHub zip has none: give one with --md5 ms-snsd=HEX to check it), and
extraction refuses absolute paths, '..' and links that point outside the target folder. Archives
are kept in --downloads (data/downloads/) so a second run downloads nothing; --remove-archives
deletes each one after it is extracted. A finished extraction leaves a .download_<name>.json
marker in its folder and is skipped next time (--force redoes it). Nothing happens at import time.
Licences: LibriSpeech CC BY 4.0; MS-SNSD: see its repository (github.com/microsoft/MS-SNSD).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import posixpath
import re
import shutil
import stat
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # run as `python data/download.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import utils  # noqa: E402

OPENSLR_URL = "https://www.openslr.org/resources/12"
MSSNSD_URL = "https://github.com/microsoft/MS-SNSD/archive/refs/heads/master.zip"
DEFAULT_DOWNLOADS = utils.ROOT / "data" / "downloads"
# md5sum.txt published at openslr.org/resources/12 (the same values appear in torchaudio, ESPnet, ...)
LIBRISPEECH = {
    "dev-clean": ("clean_train_path", "42e2234ba48799c1f50f24a7926300a1"),
    "test-clean": ("clean_test_path", "32fa31d27d2e1cad72775fee3f4849a9"),
    "train-clean-100": ("clean_train_path", "2a93770f6d5c6c964bc36631d331a522"),
    "train-clean-360": ("clean_train_path", "c0e676e450a7ff2f54aeade5171606fa"),
}
CHUNK = 1 << 20
TIMEOUT_S = 60


@dataclass
class Archive:
    name: str  # "test-clean", "ms-snsd"
    url: str
    filename: str
    md5: str | None
    targets: dict  # archive folder (after the top-level one) -> destination folder

    def marker(self, folder: Path) -> Path:
        return folder / f".download_{self.name}.json"


# ----------------------------------------------------------------------------- download


def md5sum(path: Path, progress: bool = True) -> str:
    from tqdm import tqdm

    h = hashlib.md5()
    size = path.stat().st_size
    with open(path, "rb") as f, tqdm(total=size, unit="B", unit_scale=True, desc=f"md5 {path.name}",
                                     disable=None if progress else True) as bar:  # fmt: skip
        while block := f.read(CHUNK):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def _total_size(response, start: int) -> int | None:
    crange = response.headers.get("Content-Range", "")
    if "/" in crange and crange.rsplit("/", 1)[1].strip().isdigit():
        return int(crange.rsplit("/", 1)[1])
    length = response.headers.get("Content-Length")
    return start + int(length) if length and length.isdigit() else None


def _unsatisfied_size(headers) -> int | None:
    """SIZE from a 416 reply's `Content-Range: bytes */SIZE`, or None when absent or malformed."""
    match = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", (headers or {}).get("Content-Range", "") or "")
    return int(match.group(1)) if match else None


def fetch(url: str, dest: Path, md5: str | None = None, progress: bool = True) -> Path:
    """Downloads url to dest, resuming dest.part; verifies md5 when given. Returns dest."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        if md5:
            _verify(dest, md5, progress)
        return dest
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "speech-enhancement-data/1"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code != 416 or not start:
            raise utils.PipelineError(f"{url}: download failed (HTTP {e.code} {e.reason})") from e
        # 416: nothing at or after `start`. Complete only if the server's size equals the .part's;
        # a .part of another (or changed) file would otherwise be kept (and, without md5, accepted).
        if _unsatisfied_size(e.headers) != start:
            print(
                f"{url}: {part.name} does not match the file on the server; downloading again",
                file=sys.stderr,
            )
            part.unlink()
            return fetch(url, dest, md5, progress)  # start == 0 now: no Range, no 416, no recursion
        response = None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise utils.PipelineError(f"{url}: download failed ({reason}); run again to resume") from e
    if response is not None:
        with response:
            if start and response.status != 206:  # the server ignored Range: start over
                print(f"{url}: server cannot resume; downloading from the start", file=sys.stderr)
                start = 0
            total = _total_size(response, start)
            try:
                with open(part, "ab" if start else "wb") as f, tqdm(
                    total=total, initial=start, unit="B", unit_scale=True, desc=dest.name,
                    disable=None if progress else True,
                ) as bar:  # fmt: skip
                    while block := response.read(CHUNK):
                        f.write(block)
                        bar.update(len(block))
            except OSError as e:
                raise utils.PipelineError(f"{url}: download interrupted ({e}); run again to resume") from e
        if total is not None and part.stat().st_size != total:
            raise utils.PipelineError(
                f"{url}: incomplete download ({part.stat().st_size} of {total} bytes); run again to resume"
            )
    if md5:
        _verify(part, md5, progress)
    os.replace(part, dest)
    return dest


def _verify(path: Path, md5: str, progress: bool) -> None:
    got = md5sum(path, progress)
    if got != md5.lower():
        path.unlink()  # a corrupt archive is worth nothing; the next run starts afresh
        raise utils.PipelineError(
            f"{path}: md5 mismatch (expected {md5.lower()}, got {got}); the file was removed, run again"
        )


# ----------------------------------------------------------------------------- safe extraction


def _clean_name(name: str) -> str:
    """A member name as a safe relative posix path, or PipelineError."""
    unix = name.replace("\\", "/")
    if unix.startswith("/") or (len(unix) > 1 and unix[1] == ":"):
        raise utils.PipelineError(f"{name}: absolute path in archive; refusing to extract")
    parts = [p for p in unix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise utils.PipelineError(f"{name}: '..' in archive path; refusing to extract")
    return "/".join(parts)


def _route(name: str, targets: dict) -> Path | None:
    """Destination of a member: drop the archive's top folder, then map a selected folder to its target."""
    parts = name.split("/")[1:]
    for folder, dest in targets.items():
        prefix = folder.split("/") if folder else []
        if parts[: len(prefix)] == prefix and len(parts) > len(prefix):
            return Path(dest).joinpath(*parts[len(prefix) :])
    return None


def _inside(path: Path, root: Path) -> bool:
    return os.path.normpath(path).startswith(os.path.normpath(root) + os.sep)


def _check_link(name: str, target_name: str, base: str) -> str:
    """A link's target, resolved inside the archive; PipelineError if it would leave it."""
    if target_name.startswith("/") or target_name.replace("\\", "/").startswith("/"):
        raise utils.PipelineError(f"{name}: link to an absolute path ({target_name}); refusing to extract")
    resolved = posixpath.normpath(posixpath.join(base, target_name))
    if resolved == ".." or resolved.startswith("../") or resolved.startswith("/"):
        raise utils.PipelineError(
            f"{name}: link points outside the archive ({target_name}); refusing to extract"
        )
    return resolved


def _write_member(src, dest: Path) -> None:
    with utils.atomic_write(dest, "wb") as f:
        shutil.copyfileobj(src, f, CHUNK)


def extract_tar(archive: Path, targets: dict, progress: bool = True) -> int:
    """Extracts the selected members of a tar(.gz) file safely; returns the number of files written."""
    from tqdm import tqdm

    roots = [Path(d) for d in targets.values()]
    written = 0
    with tarfile.open(archive, "r:*") as tar, tqdm(desc=f"extract {archive.name}", unit=" files",
                                                   disable=None if progress else True) as bar:  # fmt: skip
        for member in tar:
            name = _clean_name(member.name)
            if member.issym() or member.islnk():
                base = posixpath.dirname(name) if member.issym() else ""
                resolved = _check_link(name, member.linkname, base)
                dest, target = _route(name, targets), _route(resolved, targets)
                if dest is None:
                    continue
                if target is None or not any(_inside(target, r) for r in roots):
                    raise utils.PipelineError(f"{name}: link points outside the extracted folders; refusing")
                dest.parent.mkdir(parents=True, exist_ok=True)
                if member.issym():
                    dest.unlink(missing_ok=True)
                    os.symlink(os.path.relpath(target, dest.parent), dest)
                else:
                    shutil.copyfile(target, dest)  # hard link: the target was extracted before it
                continue
            if not (member.isfile() or member.isdir()):
                raise utils.PipelineError(f"{name}: special file (device or fifo) in archive; refusing")
            dest = _route(name, targets)
            if dest is None or member.isdir():
                continue
            with tar.extractfile(member) as src:
                _write_member(src, dest)
            written += 1
            bar.update(1)
    return written


def extract_zip(archive: Path, targets: dict, progress: bool = True) -> int:
    """Extracts the selected members of a zip file safely; returns the number of files written."""
    from tqdm import tqdm

    written = 0
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:  # check everything before writing anything (random access is cheap)
            name = _clean_name(info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                raise utils.PipelineError(f"{name}: symbolic link in zip archive; refusing to extract")
        for info in tqdm(
            members, desc=f"extract {archive.name}", unit=" files", disable=None if progress else True
        ):
            dest = _route(_clean_name(info.filename), targets)
            if dest is None or info.is_dir():
                continue
            with zf.open(info) as src:
                _write_member(src, dest)
            written += 1
    return written


# ----------------------------------------------------------------------------- the corpora


def plan(cfg, subsets, noise: bool, base_url: str, msnsd_url: str, md5s: dict) -> list[Archive]:
    data = cfg["data"]
    out = []
    for subset in subsets:
        key, known = LIBRISPEECH[subset]
        out.append(Archive(subset, f"{base_url.rstrip('/')}/{subset}.tar.gz", f"{subset}.tar.gz",
                           md5s.get(subset, known), {subset: Path(data[key]) / subset}))  # fmt: skip
    if noise:
        targets = {"noise_train": Path(data["noise_train_path"]), "noise_test": Path(data["noise_test_path"])}
        out.append(Archive("ms-snsd", msnsd_url, "MS-SNSD-master.zip", md5s.get("ms-snsd"), targets))
    return out


def get(archive: Archive, downloads: Path, force: bool, keep: bool, progress: bool = True) -> str:
    """Downloads, verifies and extracts one archive, unless its folders are already complete."""
    folders = [Path(d) for d in archive.targets.values()]
    if not force and all(archive.marker(f).is_file() for f in folders):
        return f"{archive.name}: already in {', '.join(map(str, folders))} (--force to redo)"
    if not archive.md5:
        print(f"{archive.name}: no checksum known; the download is not verified (--md5 {archive.name}=HEX)")
    path = fetch(archive.url, downloads / archive.filename, archive.md5, progress)
    extract = extract_zip if archive.filename.endswith(".zip") else extract_tar
    n = extract(path, {k: str(v) for k, v in archive.targets.items()}, progress)
    if n == 0:
        raise utils.PipelineError(f"{path}: no files for {', '.join(archive.targets)} in the archive")
    for folder in folders:
        with utils.atomic_write(archive.marker(folder), "w") as f:
            json.dump({"url": archive.url, "md5": archive.md5, "files": n}, f)
    if not keep:
        path.unlink()
    return f"{archive.name}: {n} files into {', '.join(map(str, folders))}"


def _md5_arg(text: str) -> tuple[str, str]:
    name, _, value = text.partition("=")
    value = value.strip().lower()
    if (
        name not in {*LIBRISPEECH, "ms-snsd"}
        or len(value) != 32
        or any(c not in "0123456789abcdef" for c in value)
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected NAME=32-hex-digit md5 (NAME: a subset or ms-snsd)"
        )
    return name, value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    utils.add_config_args(parser, default=utils.DATA_CONFIG)
    parser.add_argument(
        "--subsets",
        nargs="*",
        choices=sorted(LIBRISPEECH),
        default=["train-clean-100", "test-clean"],
        help="LibriSpeech subsets (default: train-clean-100 test-clean; none: --subsets)",
    )
    parser.add_argument("--no-noise", action="store_true", help="skip the MS-SNSD noise")
    parser.add_argument("--base-url", default=OPENSLR_URL, help=f"LibriSpeech mirror (default {OPENSLR_URL})")
    parser.add_argument("--msnsd-url", default=MSSNSD_URL, help="MS-SNSD zip URL")
    parser.add_argument("--md5", type=_md5_arg, action="append", default=[], metavar="NAME=HEX",
                        help="expected md5 of an archive (overrides the built-in openslr sums)")  # fmt: skip
    parser.add_argument("--downloads", type=Path, default=DEFAULT_DOWNLOADS, help="where archives are kept")
    parser.add_argument("--remove-archives", action="store_true", help="delete each archive once extracted")
    parser.add_argument("--force", action="store_true", help="download and extract even when already done")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = utils.load_config(args.config, args.overrides)
    if not cfg.has_section("data"):
        raise utils.PipelineError(f"{args.config}: no [data] section")
    archives = plan(cfg, dict.fromkeys(args.subsets), not args.no_noise, args.base_url, args.msnsd_url,
                    dict(args.md5))  # fmt: skip
    if not archives:
        print("nothing to do (no --subsets and --no-noise)")
        return 0
    for archive in archives:
        print(get(archive, args.downloads.resolve(), args.force, keep=not args.remove_archives))
    print("done; next: python data/data_prep.py")
    return 0


if __name__ == "__main__":
    sys.exit(utils.run_main(main))
