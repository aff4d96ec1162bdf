"""Committed copies of trained LoRA stages ("stage seeds"), so a fresh machine restores them instead of retraining.

    python -m experiments.smollm2.seeds save --profile robust --variant f3e3v2-ul1w-s400   # after run.py built it
    python -m experiments.smollm2.seeds list

Why: the stage cache (``$SAFEGENE_HOME/experiments/smollm2/``) does not survive from one machine to the next, and
the robust A's alignment (400 steps) takes ~42 minutes of a 2-core CPU every time; everything after it (D, the task
adapters, the safety adapter) depends on it. Training is deterministic on CPU (a retrained stage reproduced its
validation counts exactly), so a byte copy of the trained LoRA *is* that stage: ``experiments/smollm2/seeds/<stage
folder name>/`` holds the LoRA byte for byte as the trainer saved it (bf16) and the original
``stage.json``. The stage that restores it is looked up by the same content hash, the LoRA's sha256 is checked
against the one recorded at save time, and the restored stage's ``stage.json`` says ``restored_from``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from safegene_runtime.artifacts import atomic_write_json, sha256_file

SEEDS = Path(__file__).resolve().parent / "seeds"
SEED_FILE = "seed.json"  # {"stage": <folder name>, "files": {relative path: sha256}, "stage_json": {...}}
LORA_FILES = ("adapter_model.safetensors", "adapter_config.json")


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


class SeedError(RuntimeError):
    """A seed whose files do not match what was recorded when it was saved."""


def save(stage: Path, root: Path = SEEDS) -> Path:
    """Copy ``stage``'s trained LoRA (``stage/lora``) and its record into ``root/<stage name>`` (written whole)."""
    record = json.loads((stage / "stage.json").read_text())
    dest = root / stage.name
    tmp = root / f".tmp-{stage.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "lora").mkdir(parents=True)
    files = {}
    for name in LORA_FILES:
        shutil.copy2(stage / "lora" / name, tmp / "lora" / name)
        files[f"lora/{name}"] = sha256_file(tmp / "lora" / name)
    atomic_write_json(tmp / SEED_FILE, {"stage": stage.name, "files": files, "stage_json": record})
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def find(stage_name: str, root: Path = SEEDS) -> Path | None:
    """The seed folder of the stage folder ``stage_name`` (``align-<hash>``), or None."""
    seed = root / stage_name
    return seed if (seed / SEED_FILE).is_file() else None


def restore(seed: Path, lora_dest: Path) -> dict:
    """Copy the seed's LoRA to ``lora_dest`` after checking every file's sha256; returns the original stage.json."""
    meta = json.loads((seed / SEED_FILE).read_text())
    for rel, want in meta["files"].items():
        got = sha256_file(seed / rel)
        if got != want:
            raise SeedError(f"stage seed {seed}: {rel} has sha256 {got[:12]}…, recorded {want[:12]}…; "
                            "delete the seed folder to retrain the stage")
    lora_dest.mkdir(parents=True, exist_ok=True)
    for rel in meta["files"]:
        shutil.copy2(seed / rel, lora_dest / Path(rel).name)
    return meta["stage_json"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m experiments.smollm2.seeds", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("save", help="commit-ready copy of a built align stage (run.py --stages align first)")
    sv.add_argument("--profile", default="robust")
    sv.add_argument("--variant", default=None)
    sv.add_argument("--set", action="append", default=[], metavar="align.KEY=VALUE", dest="sets")
    sub.add_parser("list", help="the committed seeds")
    a = ap.parse_args(argv)
    if a.cmd == "list":
        for seed in sorted(p for p in SEEDS.glob("*") if (p / SEED_FILE).is_file()):
            meta = json.loads((seed / SEED_FILE).read_text())
            print(f"{seed.name}  {_size_mb(seed):.1f} MB  params {json.dumps(meta['stage_json'].get('params'))[:120]}")
        return 0
    from .run import Study

    study = Study(a.profile, [], [], variant=a.variant, sets=a.sets)
    study.st.cached_only = True  # saving never trains
    dest = save(study.align())
    print(f"saved {dest} ({_size_mb(dest):.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
