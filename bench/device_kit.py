"""Pack what the GPU machine lacks for ``bench/gpu_check.py``, into one ignored folder of the checkout.

    python bench/device_kit.py device_kit                        # real FER2013 from ../shared/data when present
    python bench/device_kit.py device_kit --data demo            # demo faces (what the tests use)

Writes ``DIR/site/`` (the pure-Python packages fer-tune imports that the GPU machine does not have,
copied as source: ranger21, pytorch_ranger; it goes on ``PYTHONPATH``) and ``DIR/data/`` (one file:
the data's Training and PublicTest splits as uint8 arrays in fer-tune's compact form, which
``load_fer`` and ``launch.py data`` read like any other layout; PrivateTest is left out, it chooses
nothing in a device check). The folder must stay under :data:`MAX_BYTES` (what travels to the
device is at most 64 MiB with the checkout); the command checks that and prints the exact command
to run there.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fer_tune.data.compact import COMPACT_SUFFIX, write_compact  # noqa: E402
from fer_tune.data.csv_layout import content_md5  # noqa: E402
from fer_tune.data.demo import DemoSpec, write_demo_csv  # noqa: E402
from fer_tune.data.fer2013 import load_fer  # noqa: E402
from fer_tune.errors import UserError  # noqa: E402

SHARED_FER2013 = ROOT.parent / "shared" / "data" / "fer2013.csv.xz"
PACKAGES = ("ranger21", "pytorch_ranger")  # imported by fer-tune, missing on the GPU machine, pure Python
SPLITS = ("Training", "PublicTest")
MAX_BYTES = 60 * 2**20
DATA_NAME = "fer2013-train-public" + COMPACT_SUFFIX


def folder_bytes(folder: Path) -> int:
    """Bytes of every file below ``folder``."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def copy_packages(site: Path) -> list[str]:
    """Copy each of :data:`PACKAGES` (its source files, no caches) into ``site``; their names."""
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f'{name} is not installed here; run pip install -e ".[dev]" first')
        source = Path(next(iter(spec.submodule_search_locations)))
        shutil.copytree(source, site / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"), dirs_exist_ok=True)
    return list(PACKAGES)


def pack_data(source: str, data_dir: Path) -> Path:
    """``source`` (a FER2013 file, or ``demo``) as one compact file in ``data_dir``."""
    if source == "demo":
        csv = write_demo_csv(data_dir / "demo.csv", DemoSpec(40, 10, 10, seed=1))
        data, md5 = load_fer(csv, use_cache=False), content_md5(csv)
        csv.unlink()
    else:
        data, md5 = load_fer(source, use_cache=False), content_md5(Path(source))
    missing = [name for name in SPLITS if name not in data.split_names]
    if missing:
        raise UserError(
            f"{source}: has no {', '.join(missing)} split; the device check needs FER2013's "
            "Training and PublicTest (the Kaggle fer2013.csv)"
        )
    target = data_dir / DATA_NAME
    write_compact(data, target, SPLITS, md5)
    return target


def ignored_by_git(folder: Path) -> bool:
    """Whether git ignores ``folder`` in this checkout (so the kit is never committed)."""
    probe = folder / "probe"
    done = subprocess.run(["git", "check-ignore", "-q", str(probe)], cwd=ROOT, capture_output=True)
    return done.returncode == 0


def build_kit(kit: Path, source: str) -> tuple[list[str], Path, int]:
    """Write the kit into ``kit`` (a new folder, or one this command wrote): (packages, data file, bytes)."""
    if kit.exists() and any(kit.iterdir()) and not (kit / "site").is_dir():
        raise UserError(f"{kit}: holds files that are not a device kit; choose an empty or new folder")
    shutil.rmtree(kit / "site", ignore_errors=True)
    shutil.rmtree(kit / "data", ignore_errors=True)
    packages = copy_packages(kit / "site")
    data_file = pack_data(source, kit / "data")
    size = folder_bytes(kit)
    if size > MAX_BYTES:
        raise UserError(
            f"{kit}: the kit is {size / 2**20:.1f} MiB, over its {MAX_BYTES / 2**20:.0f} MiB bound, so it "
            "would not travel to the device"
        )
    return packages, data_file, size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="an ignored folder of the checkout, e.g. device_kit")
    parser.add_argument(
        "--data", default=None, help=f"a FER2013 file, or 'demo'; default: {SHARED_FER2013} when present, else demo"
    )
    args = parser.parse_args(argv)
    source = args.data or (str(SHARED_FER2013) if SHARED_FER2013.is_file() else "demo")
    kit = args.dir.resolve()
    try:
        if not kit.is_relative_to(ROOT) or not ignored_by_git(kit):
            raise UserError(
                f"{args.dir}: the kit goes in a folder of this checkout that git ignores (e.g. "
                "device_kit/, listed in .gitignore), so that it travels with `carry` and is never committed"
            )
        packages, data_file, size = build_kit(kit, source)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rel = kit.relative_to(ROOT)
    print(
        f"kit {rel}: {', '.join(packages)} in {rel}/site, {data_file.name} ({data_file.stat().st_size / 2**20:.1f} "
        f"MiB) from {source}; {size / 2**20:.1f} MiB in all (bound {MAX_BYTES / 2**20:.0f} MiB)"
    )
    print(f"take along (carry): {rel}")
    print(
        f"run there: PYTHONPATH={rel}/site:. python bench/gpu_check.py --data {rel}/data/{data_file.name} "
        "--out $OUT/gpu_check"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
