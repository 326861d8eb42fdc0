"""tools/device_pack.py on fabricated distributions and wheels: what gets packed, what is refused, how it is split."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("device_pack", REPO / "tools" / "device_pack.py")
device_pack = importlib.util.module_from_spec(_spec)
sys.modules["device_pack"] = device_pack  # dataclasses look their module up while the file executes
_spec.loader.exec_module(device_pack)

DEVICE = frozenset({"numpy", "requests"})


def metadata(name: str, version: str, *requires: str, requires_python: str = "") -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {line}" for line in requires]
    lines += [f"Requires-Python: {requires_python}"] if requires_python else []
    return "\n".join(lines) + "\n"


def fake_site(root: Path, *packages: str) -> list[str]:
    """A site dir holding only `.dist-info/METADATA` files; each package is a metadata() text."""
    for text in packages:
        name = text.split("Name: ")[1].split("\n")[0]
        version = text.split("Version: ")[1].split("\n")[0]
        info = root / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(text)
    return [str(root)]


def fake_wheel(folder: Path, name: str, version: str, *requires: str, files: dict[str, bytes] | None = None) -> Path:
    """A wheel with METADATA and `files`; a file whose name ends in "-helper" is stored executable."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata(name, version, *requires))
        for path, data in (files or {}).items():
            info = zipfile.ZipInfo(path)
            info.external_attr = (0o755 if path.endswith("-helper") else 0o644) << 16
            archive.writestr(info, data)
    return wheel


def no_fetch(requirement: Requirement):
    raise AssertionError(f"nothing should be fetched, asked for {requirement}")


@pytest.fixture
def local(tmp_path):
    path = fake_site(
        tmp_path / "site",
        metadata(
            "misaki", "0.9.4", "regex", "spacy; extra == 'en'", "jieba; extra == 'zh'",
            "ja-only; extra == 'ja'", "win-only; sys_platform == 'win32'", "old-py; python_version < '3.12'",
        ),
        metadata("spacy", "3.8.18", "thinc<8.4.0,>=8.3.4", "numpy>=1.19", "Cython; extra == 'cuda'"),
        metadata("thinc", "8.3.14", "requests"),
        metadata("jieba", "0.42.1"),
        metadata("kokoro", "0.9.4", "misaki[en]>=0.9.4", "torch", "nvidia-cudnn-cu12", "triton"),
        metadata("ja-only", "1.0"),
        metadata("win-only", "1.0"),
        metadata("old-py", "1.0"),
        metadata("regex", "2024.1.1"),
        metadata("requests", "2.32.0", "not-installed-anywhere"),
    )  # fmt: skip
    return device_pack.installed_dists(path)


def names(nodes) -> dict[str, str]:
    return {name: str(node.dist.version) for name, node in nodes.items()}


def test_closure_follows_markers_and_extras_and_pins_installed_versions(local):
    nodes = device_pack.resolve([Requirement("kokoro")], local, no_fetch, DEVICE)
    # kokoro asks misaki[en]: spacy comes, jieba (zh) and ja-only do not; win32 and Python<3.12 deps are dropped;
    # torch, triton, nvidia-* and the device's numpy/requests (and what requests would need) are left out.
    assert names(nodes) == {
        "kokoro": "0.9.4", "misaki": "0.9.4", "spacy": "3.8.18", "thinc": "8.3.14", "regex": "2024.1.1",
    }  # fmt: skip
    assert nodes["misaki"].extras == {"", "en"}


def test_extras_asked_later_add_their_dependencies_once(local):
    roots = [Requirement("kokoro"), Requirement("misaki[zh,en]")]
    nodes = device_pack.resolve(roots, local, no_fetch, DEVICE)
    assert nodes["misaki"].extras == {"", "en", "zh"}
    assert "jieba" in nodes and "ja-only" not in nodes and "cython" not in nodes


def test_root_at_another_version_and_missing_dependencies_come_from_wheels(local, tmp_path):
    wheels = {
        "xfuser": fake_wheel(tmp_path / "w", "xfuser", "0.4.5", "yunchang>=0.6", "spacy>=3", "numpy"),
        "yunchang": fake_wheel(tmp_path / "w", "yunchang", "0.6.0", "loguru; python_version >= '3.12'"),
        "loguru": fake_wheel(tmp_path / "w", "loguru", "0.7.3"),
    }
    local["xfuser"] = device_pack.Dist("xfuser", Version("0.4.2"), [])  # installed here, but not the version asked
    asked = []

    def fetch(requirement):
        asked.append(f"{requirement.name}{requirement.specifier}")
        return device_pack.dist_from_wheel(wheels[requirement.name])

    nodes = device_pack.resolve([Requirement("xfuser==0.4.5")], local, fetch, DEVICE)
    assert asked == ["xfuser==0.4.5", "yunchang>=0.6", "loguru"]
    assert names(nodes) == {
        "xfuser": "0.4.5", "yunchang": "0.6.0", "loguru": "0.7.3", "spacy": "3.8.18", "thinc": "8.3.14",
    }  # fmt: skip
    assert nodes["xfuser"].dist.wheel == wheels["xfuser"] and nodes["spacy"].dist.wheel is None
    assert device_pack.check(nodes, DEVICE) == []


def test_check_names_a_version_mismatch_a_missing_dependency_and_a_python_range(local):
    nodes = device_pack.resolve([Requirement("misaki[en]")], local, no_fetch, DEVICE)
    assert device_pack.check(nodes, DEVICE) == []
    nodes["thinc"].dist.version = Version("9.1.0")
    del nodes["regex"]
    nodes["spacy"].dist.requires_python = device_pack.SpecifierSet("<3.12")
    assert device_pack.check(nodes, DEVICE) == [
        "misaki 0.9.4 requires regex, which is neither packed nor on the device",
        "spacy 3.8.18 requires Python <3.12, the device has 3.12",
        "spacy 3.8.18 requires thinc<8.4.0,>=8.3.4, but thinc 9.1.0 is packed",
    ]


def test_check_wants_the_extras_a_dependency_was_asked_for(local):
    nodes = device_pack.resolve([Requirement("kokoro")], local, no_fetch, DEVICE)
    nodes["misaki"].extras = {""}
    assert device_pack.check(nodes, DEVICE) == [
        "kokoro 0.9.4 requires misaki[en]>=0.9.4, but misaki is packed without ['en']"
    ]


def test_repo_requirements_come_from_pyproject_with_their_extras(tmp_path):
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "duet"\nversion = "0.1.0"\ndependencies = ["click>=8"]\n'
        '[project.optional-dependencies]\nengine = ["kokoro==0.9.4", "old; python_version < \'3.12\'"]\n'
        'bots = ["discord.py>=2.7"]\n'
    )
    dist = device_pack.dist_from_pyproject(tmp_path / "pyproject.toml")
    assert [r.name for r in dist.requires if device_pack.wanted(r, {"", "engine"})] == ["click", "kokoro"]
    assert [r.name for r in dist.requires if device_pack.wanted(r, {""})] == ["click"]


def test_bins_respect_the_limit_largest_first():
    sizes = {"spacy": 50, "thinc": 30, "jieba": 25, "misaki": 20, "regex": 10, "six.py": 5}
    bins = device_pack.pack_bins(sizes, 60)
    assert sorted(name for part in bins for name in part) == sorted(sizes)
    assert all(sum(sizes[name] for name in part) <= 60 for part in bins)
    assert bins == [["spacy", "regex"], ["thinc", "jieba", "six.py"], ["misaki"]]


def test_entries_together_leave_headroom_but_one_alone_may_fill_the_part():
    sizes = {"spacy": 60, "thinc": 30, "jieba": 25, "regex": 4}
    assert device_pack.pack_bins(sizes, 60, headroom=2) == [["spacy"], ["thinc", "jieba"], ["regex"]]
    assert device_pack.pack_bins(sizes, 60) == [["spacy"], ["thinc", "jieba", "regex"]]


def test_an_entry_over_the_limit_is_named():
    with pytest.raises(device_pack.PackError, match="cv2"):
        device_pack.pack_bins({"cv2": 61, "six.py": 1}, 60)


def test_wheels_become_xz_parts_that_unpack_into_a_site_dir(tmp_path):
    wheels = [
        fake_wheel(tmp_path / "w", "alpha", "1.0", files={"alpha/__init__.py": b"A = 1\n", "alpha/bin/x-helper": b""}),
        fake_wheel(tmp_path / "w", "beta", "2.0", files={"beta-2.0.data/platlib/beta.py": b"B = 2\n"}),
    ]
    site, out, repo = tmp_path / "site", tmp_path / "repo" / ".devpack", tmp_path / "repo"
    out.mkdir(parents=True)
    (out / "part9.tar.xz").write_bytes(b"stale")
    device_pack.stage(wheels, site)
    assert (site / "beta.py").read_text() == "B = 2\n" and not list(site.glob("*.data"))
    assert os.access(site / "alpha/bin/x-helper", os.X_OK) and not os.access(site / "beta.py", os.X_OK)
    parts = device_pack.write_parts(site, device_pack.compressed_sizes(site, {}), out, limit=1 << 20)
    assert [part.name for part in parts] == ["part1.tar.xz"]
    unpacked = tmp_path / "device" / ".site"
    unpacked.mkdir(parents=True)
    subprocess.run(["tar", "xJf", parts[0], "-C", unpacked], check=True)
    assert sorted(path.name for path in unpacked.iterdir()) == sorted(path.name for path in site.iterdir())
    text = device_pack.install_text(parts, repo)
    assert "carry: [\".devpack/part1.tar.xz\"]" in text
    assert "command: rm -rf .site && mkdir -p .site && tar xJf .devpack/part1.tar.xz -C .site" in text
    assert 'export PYTHONPATH="$PWD/.site:$PWD"' in text


def test_big_entries_are_measured_as_xz_once(tmp_path, monkeypatch):
    site = tmp_path / "site"
    (site / "big").mkdir(parents=True)
    (site / "big" / "table.bin").write_bytes(b"duet" * (1 << 19))  # 2 MiB that xz shrinks to almost nothing
    (site / "small.py").write_text("x = 1\n")
    known = {}
    sizes = device_pack.compressed_sizes(site, known)
    assert sizes["small.py"] == 6 and 0 < sizes["big"] < 100_000
    assert list(known) == [f"big:{2 << 20}:1"]

    monkeypatch.setattr(device_pack, "compress", lambda *args: pytest.fail("measured twice"))
    assert device_pack.compressed_sizes(site, known) == sizes


def test_cached_pins_are_found_without_pip(tmp_path):
    cache = device_pack.WheelCache(tmp_path / "cache")
    wheel = fake_wheel(cache.folder, "thinc", "8.3.14")
    fake_wheel(cache.folder, "thinc", "9.1.0")
    (cache.folder / "thinc-8.3.14-cp311-cp311-manylinux_2_17_x86_64.whl").write_bytes(b"")  # wrong Python
    assert cache.fetch(Requirement("thinc==8.3.14")) == wheel
    assert cache.find("thinc", device_pack.SpecifierSet("<8.4")) == wheel
