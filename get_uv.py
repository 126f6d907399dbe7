"""uv, where it is missing: the newest uv wheel on PyPI for this platform, its checksum checked,
its `uv` binary put in ~/.local/bin. It needs Python alone (no pip, no venv), so it works on a bare
machine and on a system Python marked EXTERNALLY-MANAGED, where `pip install --user` refuses.

    python3 get_uv.py       # then: export PATH="$HOME/.local/bin:$PATH"
"""

import hashlib
import io
import json
import os
import platform
import re
import shutil
import sys
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import NoReturn

PYPI = "https://pypi.org/pypi/uv/json"
BIN = Path.home() / ".local" / "bin"
ELSEWHERE = "https://docs.astral.sh/uv/getting-started/installation/ lists other ways"


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def fits(tag: str, system: str, machine: str, libc: tuple[str, str]) -> tuple[int, ...] | None:
    """How well a wheel's platform tag fits this machine, higher better; None: it does not run
    here. A manylinux tag names the oldest glibc it runs on; a musllinux one, musl."""
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine.lower(), machine.lower())
    if system == "Linux":
        if libc[0] == "glibc" and (m := re.fullmatch(r"manylinux_(\d+)_(\d+)_(\w+)", tag)):
            needs = (int(m[1]), int(m[2]))
            have = tuple(int(part) for part in libc[1].split(".")[:2])
            return needs if m[3] == machine and needs <= have else None
        if libc[0] != "glibc" and (m := re.fullmatch(r"musllinux_(\d+)_(\d+)_(\w+)", tag)):
            return (int(m[1]), int(m[2])) if m[3] == machine else None
        return None
    if system == "Darwin" and (m := re.fullmatch(r"macosx_(\d+)_(\d+)_(\w+)", tag)):
        return (int(m[1]), int(m[2])) if m[3] == machine.replace("aarch64", "arm64") else None
    if system == "Windows":
        wanted = {"x86_64": "win_amd64", "aarch64": "win_arm64", "x86": "win32"}.get(machine)
        return (0,) if tag == wanted else None
    return None


def pick(files: list[dict], system: str, machine: str, libc: tuple[str, str]) -> dict:
    """The wheel among PyPI's `files` of a release that runs here."""
    best, best_fit = None, None
    for file in files:
        if not file["filename"].endswith(".whl"):
            continue
        tags = file["filename"].removesuffix(".whl").split("-")[-1].split(".")
        fit = max((f for t in tags if (f := fits(t, system, machine, libc))), default=None)
        if fit and (best_fit is None or fit > best_fit):
            best, best_fit = file, fit
    if best is None:
        fail(f"PyPI has no uv wheel for {system} on {machine}; {ELSEWHERE}")
    return best


def download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except OSError as e:
        fail(f"cannot download {url} ({e}); {ELSEWHERE}")


def install(wheel: bytes, dest: Path) -> Path:
    """The wheel's uv binary, written to `dest` (a folder) and made executable."""
    name = "uv.exe" if sys.platform == "win32" else "uv"
    with zipfile.ZipFile(io.BytesIO(wheel)) as archive:
        binary = re.compile(rf"[^/]+\.data/scripts/{re.escape(name)}")
        member = next(n for n in archive.namelist() if binary.fullmatch(n))
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / name
        partial = target.with_name(f".{name}.partial")
        partial.write_bytes(archive.read(member))
    partial.chmod(0o755)
    partial.replace(target)
    return target


def main() -> None:
    if found := shutil.which("uv"):
        print(f"uv is already installed: {found}")
        return
    release = json.loads(download(PYPI))
    machine, libc = platform.machine(), platform.libc_ver()
    file = pick(release["urls"], platform.system(), machine, libc)
    wheel = download(urllib.parse.urljoin(PYPI, file["url"]))  # a mirror may give it relative
    if hashlib.sha256(wheel).hexdigest() != file["digests"]["sha256"]:
        fail(f"{file['filename']} does not match PyPI's checksum; try again")
    uv = install(wheel, BIN)
    print(f"installed uv {release['info']['version']} as {uv}")
    if str(BIN) not in os.environ.get("PATH", "").split(os.pathsep):
        print(f'{BIN} is not on PATH: export PATH="$HOME/.local/bin:$PATH"')


if __name__ == "__main__":
    main()
