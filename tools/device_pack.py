"""Pack Duet's Python dependencies for the GPU machine, which has no network and takes files only as carries.

The machine runs CPython 3.12 on Linux x86_64 with PyTorch and a fixed set of libraries (`DEVICE_PACKAGES`);
everything else Duet imports must arrive as xz tarballs, each fitting beside the working tree in one 64 MiB carry,
and be unpacked into `.site/`, which stays on the machine while it is warm. The versions packed are the ones installed in this
venv, so what runs here is what runs there; only `--also` requirements that are not installed here come from the
package index. Before anything is packed, every requirement of every packed distribution is checked, because a
wrong pin (thinc 9 under spaCy 3.8) or a missing indirect dependency only shows up on the device otherwise.

    python tools/device_pack.py --extras engine,bots --also xfuser==0.4.5 --out .devpack
"""

from __future__ import annotations

import argparse
import email.parser
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
import zipfile
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import NormalizedName, canonicalize_name, parse_wheel_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
ROOT_NAME = canonicalize_name("duet")

# What the GPU machine's Python already has. Neither packed nor followed: their own dependencies are its business.
# Its OpenCV is 5.x, which has no Haar cascades, so Duet's opencv-python-headless 4.x is packed and shadows it.
DEVICE_PACKAGES = (
    "torch", "triton", "transformers", "accelerate", "einops", "opencv-python",
    "numpy", "pillow", "safetensors", "huggingface-hub", "tokenizers", "requests", "tqdm", "pyyaml", "regex",
    "packaging", "filelock", "fsspec", "jinja2", "sympy", "networkx", "psutil",
)  # fmt: skip
# Never packed whatever --device-packages says: the device's CUDA stack must not be shadowed.
NEVER_PACKED = ("torch", "triton")
NEVER_PACKED_PREFIX = "nvidia-"

TARGET_PYTHON = Version("3.12")
TARGET_ENVIRONMENT = {
    "implementation_name": "cpython",
    "implementation_version": "3.12.0",
    "os_name": "posix",
    "platform_machine": "x86_64",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_system": "Linux",
    "platform_version": "",
    "python_full_version": "3.12.0",
    "python_version": "3.12",
    "sys_platform": "linux",
}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")
TARGET_TAGS = frozenset(cpython_tags((3, 12), platforms=PLATFORMS)) | frozenset(
    compatible_tags((3, 12), interpreter="cp312", platforms=PLATFORMS)
)
PIP_DOWNLOAD = [
    "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
    *(arg for platform in PLATFORMS for arg in ("--platform", platform)),
]  # fmt: skip
MIB = 1 << 20
CARRY_LIMIT = 64 * MIB  # what one device call may carry: the working tree and its carries together
CARRY_MARGIN = 2 * MIB  # room for files added to the tree between packing and the install calls
MEASURE_ABOVE = MIB  # smaller entries count at their uncompressed size, an upper bound not worth measuring


class PackError(Exception):
    """A problem the user must fix before anything can be packed; the message says which."""


@dataclass
class Dist:
    """One distribution as the device will see it: exact version, requirements, and its wheel once known."""

    name: NormalizedName
    version: Version
    requires: list[Requirement]
    requires_python: SpecifierSet = field(default_factory=SpecifierSet)
    wheel: Path | None = None


@dataclass
class Node:
    """A distribution in the closure with the extras asked of it ("" stands for its base requirements)."""

    dist: Dist
    extras: set[str] = field(default_factory=set)


def dist_from_metadata(metadata: email.message.Message, wheel: Path | None = None) -> Dist:
    return Dist(
        name=canonicalize_name(metadata["Name"]),
        version=Version(metadata["Version"]),
        requires=[Requirement(line) for line in metadata.get_all("Requires-Dist") or []],
        requires_python=SpecifierSet(metadata.get("Requires-Python") or ""),
        wheel=wheel,
    )


def dist_from_wheel(wheel: Path) -> Dist:
    with zipfile.ZipFile(wheel) as archive:
        (path,) = [name for name in archive.namelist() if name.count("/") == 1 and name.endswith(".dist-info/METADATA")]
        metadata = email.parser.Parser().parsestr(archive.read(path).decode())
    return dist_from_metadata(metadata, wheel)


def dist_from_pyproject(pyproject: Path) -> Dist:
    """The repo's own requirements, read from pyproject.toml: an editable install's metadata goes stale."""
    project = tomllib.loads(pyproject.read_text())["project"]
    requires = [Requirement(line) for line in project.get("dependencies", [])]
    for extra, lines in project.get("optional-dependencies", {}).items():
        for line in lines:
            requirement = Requirement(line)
            condition = f'extra == "{extra}"'
            marker = f"({requirement.marker}) and {condition}" if requirement.marker else condition
            requirement.marker = Marker(marker)
            requires.append(requirement)
    return Dist(canonicalize_name(project["name"]), Version(project["version"]), requires)


def installed_dists(path: list[str] | None = None) -> dict[NormalizedName, Dist]:
    """The distributions of this venv (or of `path`), first one on the path winning as at import time."""
    found: dict[NormalizedName, Dist] = {}
    for distribution in importlib.metadata.distributions(path=path or sys.path):
        dist = dist_from_metadata(distribution.metadata)
        found.setdefault(dist.name, dist)
    return found


def wanted(requirement: Requirement, extras: Iterable[str]) -> bool:
    """Whether the requirement applies on the device for any of these extras of the distribution asking."""
    if requirement.marker is None:
        return True
    return any(requirement.marker.evaluate({**TARGET_ENVIRONMENT, "extra": extra}) for extra in extras)


def on_device(name: str, device_packages: frozenset[NormalizedName]) -> bool:
    return name in device_packages or name in NEVER_PACKED or name.startswith(NEVER_PACKED_PREFIX)


def resolve(
    roots: list[Requirement],
    local: dict[NormalizedName, Dist],
    fetch: Callable[[Requirement], Dist],
    device_packages: frozenset[NormalizedName],
) -> dict[NormalizedName, Node]:
    """The closure of `roots`: local distributions at their installed version, the rest fetched by requirement.

    A root naming a version that is not the installed one is fetched at that version. A dependency always takes the
    installed version, even when it does not fit: `check` reports the mismatch instead of hiding it.
    """
    nodes: dict[NormalizedName, Node] = {}
    queue = deque((requirement, True) for requirement in roots)
    while queue:
        requirement, is_root = queue.popleft()
        name = canonicalize_name(requirement.name)
        if on_device(name, device_packages):
            continue
        asked = {canonicalize_name(extra) for extra in requirement.extras}
        if name not in nodes:
            dist = local.get(name)
            fits = dist is not None and requirement.specifier.contains(dist.version, prereleases=True)
            if dist is None or (is_root and not fits):
                dist = fetch(requirement)
            nodes[name] = Node(dist)
            asked.add("")
        node = nodes[name]
        new = asked - node.extras
        node.extras |= new
        queue.extend((dependency, False) for dependency in node.dist.requires if new and wanted(dependency, new))
    return nodes


def check(nodes: dict[NormalizedName, Node], device_packages: frozenset[NormalizedName]) -> list[str]:
    """Every requirement of every packed distribution, and its Python range, as problems in words (none: fine)."""
    problems = []
    for node in nodes.values():
        dist = node.dist
        who = f"{dist.name} {dist.version}"
        if not dist.requires_python.contains(TARGET_PYTHON, prereleases=True):
            problems.append(f"{who} requires Python {dist.requires_python}, the device has {TARGET_PYTHON}")
        for requirement in dist.requires:
            name = canonicalize_name(requirement.name)
            if not wanted(requirement, node.extras) or on_device(name, device_packages):
                continue
            needed = nodes.get(name)
            if needed is None:
                problems.append(f"{who} requires {requirement}, which is neither packed nor on the device")
            elif not requirement.specifier.contains(needed.dist.version, prereleases=True):
                problems.append(f"{who} requires {requirement}, but {name} {needed.dist.version} is packed")
            elif missing := {canonicalize_name(extra) for extra in requirement.extras} - needed.extras:
                problems.append(f"{who} requires {requirement}, but {name} is packed without {sorted(missing)}")
    return sorted(problems)


def fits_device(wheel: Path) -> bool:
    return not parse_wheel_filename(wheel.name)[3].isdisjoint(TARGET_TAGS)


class WheelCache:
    """A folder of wheels for the device, filled by `pip download` (or `pip wheel` for sdist-only packages)."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def find(self, name: str, specifier: SpecifierSet) -> Path | None:
        """The newest cached wheel of `name` in `specifier` that the device can install."""
        matches = []
        for wheel in self.folder.glob("*.whl"):
            wheel_name, version, _, _ = parse_wheel_filename(wheel.name)
            if wheel_name == canonicalize_name(name) and specifier.contains(version, prereleases=True):
                if fits_device(wheel):
                    matches.append((version, wheel))
        return max(matches)[1] if matches else None

    def fetch(self, requirement: Requirement) -> Path:
        """A wheel for `requirement`: a pin is served from the cache, a range always asks the index for its best."""
        specifier = requirement.specifier
        pinned = len(specifier) == 1 and next(iter(specifier)).operator == "=="
        if pinned and (wheel := self.find(requirement.name, specifier)):
            return wheel
        spec = f"{requirement.name}{specifier}"
        with tempfile.TemporaryDirectory(dir=self.folder) as incoming:
            download = pip(*PIP_DOWNLOAD, "--dest", incoming, spec)
            if download.returncode != 0:
                print(f"  no cp312 manylinux wheel for {spec}; building one here", flush=True)
                build = pip("wheel", "--no-deps", "--wheel-dir", incoming, spec)
                if build.returncode != 0:
                    raise PackError(f"no wheel for {spec}:\n{download.stderr}\n{build.stderr}")
            (wheel,) = Path(incoming).glob("*.whl")
            if not fits_device(wheel):
                raise PackError(f"{wheel.name} does not install on CPython 3.12 manylinux x86_64")
            return wheel.rename(self.folder / wheel.name)


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pip", "--quiet", *args], capture_output=True, text=True)


def stage(wheels: Iterable[Path], site: Path) -> None:
    """Unpack wheels as pip would into a site dir: `*.data/purelib|platlib` go to the top, scripts are dropped.

    zipfile drops permissions, so executable bits (bundled helper binaries) are put back from the archive.
    """
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(site)
            for member in archive.infolist():
                if (member.external_attr >> 16) & 0o111 and not member.is_dir():
                    target = site / member.filename
                    target.chmod(target.stat().st_mode | 0o111)
    for data in site.glob("*.data"):
        for library in ("purelib", "platlib"):
            if (data / library).is_dir():
                shutil.copytree(data / library, site, dirs_exist_ok=True)
        shutil.rmtree(data)


def compress(site: Path, entries: list[str], target: Path) -> int:
    """`tar | xz -T0 -6` of these top-level entries of `site` into `target`; returns its size in bytes."""
    with target.open("wb") as out:
        tar = subprocess.Popen(
            ["tar", "-cf", "-", "--sort=name", "--owner=0", "--group=0", "--numeric-owner", "-C", site, *entries],
            stdout=subprocess.PIPE,
        )
        xz = subprocess.run(["xz", "-T0", "-6", "-c"], stdin=tar.stdout, stdout=out)
        tar.stdout.close()
        if tar.wait() != 0 or xz.returncode != 0:
            raise PackError(f"tar | xz failed for {entries}")
    return target.stat().st_size


def pack_bins(sizes: dict[str, int], limit: int, headroom: int = 0) -> list[list[str]]:
    """First-fit decreasing: largest entries first, each into the first part with room for it.

    An entry alone may take the whole limit; entries together leave `headroom` free, because xz -T0 cuts blocks
    wherever they fall and a part can come out a little larger than its entries compressed alone.
    """
    if oversized := [name for name, size in sizes.items() if size > limit]:
        raise PackError(f"larger than the {limit / MIB:.0f} MiB limit even alone: {', '.join(sorted(oversized))}")
    bins: list[tuple[int, list[str]]] = []
    for name in sorted(sizes, key=lambda name: (-sizes[name], name)):
        for index, (used, names) in enumerate(bins):
            if used + sizes[name] <= limit - headroom:
                bins[index] = (used + sizes[name], [*names, name])
                break
        else:
            bins.append((sizes[name], [name]))
    return [names for _, names in bins]


def compressed_sizes(site: Path, known: dict[str, int]) -> dict[str, int]:
    """Each top-level entry's size as an xz tarball of its own, which bounds its share of a part.

    Small entries count at their uncompressed size. `known` remembers measured entries by name, bytes and file
    count across runs, because measuring costs as much as writing the parts.
    """
    sizes = {}
    with tempfile.TemporaryDirectory(dir=site.parent) as scratch:
        for entry in sorted(site.iterdir()):
            files = [entry] if entry.is_file() else [path for path in entry.rglob("*") if path.is_file()]
            size = sum(path.stat().st_size for path in files)
            key = f"{entry.name}:{size}:{len(files)}"
            if size > MEASURE_ABOVE and key not in known:
                known[key] = compress(site, [entry.name], Path(scratch, "entry.tar.xz"))
            sizes[entry.name] = known.get(key, size)
    return sizes


def write_parts(site: Path, sizes: dict[str, int], out: Path, limit: int) -> list[Path]:
    """The staged site dir as `part<N>.tar.xz` files of at most `limit` bytes each."""
    for stale in out.glob("part*.tar.xz"):
        stale.unlink()
    parts = []
    for number, entries in enumerate(pack_bins(sizes, limit, headroom=limit // 100), start=1):
        part = out / f"part{number}.tar.xz"
        if compress(site, entries, part) > limit:
            raise PackError(f"{part.name} came out larger than {limit / MIB:.0f} MiB; lower --limit-mb")
        parts.append(part)
    return parts


def pack(dists: list[Dist], cache: WheelCache, out: Path, limit: int) -> list[Path]:
    """Stage the wheels of `dists` and write the parts; measured entry sizes are kept beside the wheels."""
    known_file = cache.folder / "xz-sizes.json"
    known = json.loads(known_file.read_text()) if known_file.exists() else {}
    wheels = (dist.wheel or cache.fetch(Requirement(f"{dist.name}=={dist.version}")) for dist in dists)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache.folder) as site:
        stage(wheels, Path(site))
        sizes = compressed_sizes(Path(site), known)
        known_file.write_text(json.dumps(known, indent=0, sort_keys=True))
        return write_parts(Path(site), sizes, out, limit)


def install_text(parts: list[Path], repo: Path) -> str:
    """The device calls, one per part: the first one also clears what an earlier install left in `.site`."""
    lines = [
        f"# {len(parts)} calls, back to back: the machine forgets .site once it is released (~30 s idle).",
        "# Then every command that runs Duet there starts with the export below.",
        "",
    ]
    for number, part in enumerate(parts, start=1):
        relative = part.resolve().relative_to(repo.resolve()).as_posix()
        clear = "rm -rf .site && " if number == 1 else ""
        lines += [
            f"# call {number}",
            f'carry: ["{relative}"]',
            f"command: {clear}mkdir -p .site && tar xJf {relative} -C .site",
            "",
        ]
    lines.append('export PYTHONPATH="$PWD/.site:$PWD"')
    return "\n".join(lines) + "\n"


def carry_room() -> int:
    """Bytes one part may take: a call carries the tracked tree too, and both together must stay under 64 MiB."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True).stdout
    tree = sum((REPO / name).stat().st_size for name in listed.decode().split("\0") if name and (REPO / name).is_file())
    return CARRY_LIMIT - tree - CARRY_MARGIN


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--extras", default="engine,bots", help="extras of duet to pack (comma-separated)")
    parser.add_argument("--also", action="extend", nargs="+", default=[], help="more requirements, e.g. xfuser==0.4.5")
    parser.add_argument("--out", type=Path, default=REPO / ".devpack", help="folder for the parts and install.txt")
    parser.add_argument(
        "--limit-mb", type=float, default=None, help="largest part, in MiB (default: what a carry leaves beside the tree)"
    )
    parser.add_argument("--cache", type=Path, default=Path("/work/scratch/device-wheels"), help="wheel cache")
    parser.add_argument(
        "--device-packages", default=",".join(DEVICE_PACKAGES), help="what the device has (comma-separated)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.out.resolve().is_relative_to(REPO):
        print(f"--out must lie inside {REPO}: only the repo's paths can be carried", file=sys.stderr)
        return 2
    device_packages = frozenset(canonicalize_name(name) for name in args.device_packages.split(",") if name)
    local = installed_dists()
    local[ROOT_NAME] = dist_from_pyproject(REPO / "pyproject.toml")
    cache = WheelCache(args.cache)
    roots = [Requirement(f"duet[{args.extras}]"), *(Requirement(line) for line in args.also)]
    try:
        nodes = resolve(roots, local, lambda requirement: dist_from_wheel(cache.fetch(requirement)), device_packages)
        for node in nodes.values():
            print(f"  {node.dist.name}=={node.dist.version}", "(index)" if node.dist.wheel else "(this venv)")
        if problems := check(nodes, device_packages):
            print(f"{len(problems)} problem(s), nothing packed:", *problems, sep="\n  ", file=sys.stderr)
            return 1
        packed = [node.dist for name, node in nodes.items() if name != ROOT_NAME]
        limit = int(args.limit_mb * MIB) if args.limit_mb else carry_room()
        parts = pack(packed, cache, args.out, limit)
    except PackError as error:
        print(error, file=sys.stderr)
        return 1
    (args.out / "install.txt").write_text(install_text(parts, REPO))
    print(f"{len(packed)} distributions in {len(parts)} parts:")
    for part in parts:
        print(f"  {part}  {part.stat().st_size / MIB:.1f} MiB")
    print(f"device commands: {args.out / 'install.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
