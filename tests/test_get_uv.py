"""get_uv.py, the set-up's first step on a machine without uv: the wheel it picks for a platform,
and its install with PyPI replaced at urllib's boundary."""

import hashlib
import io
import json
import zipfile

import pytest

import get_uv

FILES = [
    {"filename": f"uv-1.0-py3-none-{tags}.whl"}
    for tags in (
        "macosx_10_12_x86_64",
        "macosx_11_0_arm64",
        "manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64",
        "manylinux_2_17_x86_64.manylinux2014_x86_64",
        "manylinux_2_28_aarch64",
        "musllinux_1_1_x86_64",
        "win_amd64",
        "win_arm64",
    )
] + [{"filename": "uv-1.0.tar.gz"}]


@pytest.mark.parametrize(
    "system, machine, libc, wheel",
    [
        ("Linux", "x86_64", ("glibc", "2.36"), "manylinux_2_17_x86_64.manylinux2014_x86_64"),
        ("Linux", "x86_64", ("", ""), "musllinux_1_1_x86_64"),
        ("Linux", "aarch64", ("glibc", "2.31"), "manylinux_2_28_aarch64"),
        (
            "Linux",
            "aarch64",
            ("glibc", "2.27"),
            "manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64",
        ),
        ("Darwin", "arm64", ("", ""), "macosx_11_0_arm64"),
        ("Darwin", "x86_64", ("", ""), "macosx_10_12_x86_64"),
        ("Windows", "AMD64", ("", ""), "win_amd64"),
    ],
)
def test_the_wheel_for_each_platform(system, machine, libc, wheel):
    picked = get_uv.pick(FILES, system, machine, libc)["filename"]
    assert picked == f"uv-1.0-py3-none-{wheel}.whl"


def test_a_platform_without_a_wheel_is_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        get_uv.pick(FILES, "Linux", "ppc64le", ("glibc", "2.36"))
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith("error: PyPI has no uv wheel for Linux on ppc64le;")


def fake_pypi(monkeypatch, wheel: bytes, sha256: str) -> None:
    """PyPI's JSON API and its file host, as a mirror answers them (the file's URL relative)."""
    release = {
        "info": {"version": "1.0"},
        "urls": [
            {
                "filename": "uv-1.0-py3-none-manylinux_2_17_x86_64.whl",
                "url": "../../packages/uv-1.0-py3-none-manylinux_2_17_x86_64.whl",
                "digests": {"sha256": sha256},
            }
        ],
    }
    answers = {
        get_uv.PYPI: json.dumps(release).encode(),
        "https://pypi.org/packages/uv-1.0-py3-none-manylinux_2_17_x86_64.whl": wheel,
    }
    monkeypatch.setattr(
        get_uv.urllib.request, "urlopen", lambda url, timeout: io.BytesIO(answers[url])
    )
    monkeypatch.setattr(get_uv.platform, "system", lambda: "Linux")
    monkeypatch.setattr(get_uv.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(get_uv.platform, "libc_ver", lambda: ("glibc", "2.36"))


def wheel() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("uv/__init__.py", "")
        archive.writestr("uv-1.0.data/scripts/uvx", "not this one")
        archive.writestr("uv-1.0.data/scripts/uv", "#!/bin/sh\necho uv 1.0\n")
    return out.getvalue()


def test_installs_the_binary_where_uv_is_missing(tmp_path, monkeypatch, capsys):
    data = wheel()
    fake_pypi(monkeypatch, data, hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(get_uv, "BIN", tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    get_uv.main()
    uv = tmp_path / "bin" / "uv"
    assert uv.read_text() == "#!/bin/sh\necho uv 1.0\n" and uv.stat().st_mode & 0o111
    out = capsys.readouterr().out
    assert f"installed uv 1.0 as {uv}" in out and "is not on PATH" in out
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    get_uv.main()  # found now: nothing to do
    assert capsys.readouterr().out == f"uv is already installed: {uv}\n"


def test_a_wheel_that_does_not_match_its_checksum_is_refused(tmp_path, monkeypatch, capsys):
    fake_pypi(monkeypatch, wheel(), "0" * 64)
    monkeypatch.setattr(get_uv, "BIN", tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(SystemExit) as stop:
        get_uv.main()
    assert stop.value.code == 2 and not (tmp_path / "bin").exists()
    assert capsys.readouterr().err.count("\n") == 1
