"""Unlabeled volumes for self-supervised diffusion pretraining, one plane at a time.

Sources (``--data``, repeatable): a manifest CSV (the column named after the plane holds the
paths, relative to the CSV), a folder (every NIfTI/NRRD/MHA file in it, recursively), or a single
volume file. 4D multi-echo files contribute one volume per echo (``echoes="all"``) or only the
chosen echo. A volume whose acquisition plane is not the requested one is reformatted into that
plane (``reformat_to_planes``) unless ``reformat=False``, in which case it is skipped.

Every volume is preprocessed once, in memory, to the backbone input ``[D, H, W]`` in [-1, 1] by
``OrthoDiffusionLib.io.preprocess`` (``released`` or ``spacing`` mode). Augmentation is applied
per sample in the training loop from an explicit ``torch.Generator``, so it is reproducible and
resumable (its state is part of every checkpoint).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..planes import PLANES

# axis of the [D, H, W] array that runs left <-> right in each canonical layout (see io/planes.py)
LEFT_RIGHT_AXIS = {"sagittal": 0, "coronal": 2, "axial": 2}


@dataclass
class VolumeItem:
    path: str
    echo: int | None
    plane: str
    reformatted: bool
    array: np.ndarray = field(repr=False)

    @property
    def name(self) -> str:
        return Path(self.path).name + (f"#echo{self.echo}" if self.echo else "") + ("(reformat)" if self.reformatted else "")


def _volume_files(folder: Path) -> list[Path]:
    from ..io.volumes import is_volume_file

    return sorted(p for p in folder.rglob("*") if p.is_file() and is_volume_file(p))


def _manifest_paths(csv_path: Path, plane: str) -> list[Path]:
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        column = next((c for c in cols if c.strip().lower() in {plane, f"{plane}_path", f"{plane}_image"}), None)
        if column is None:
            raise InputError(f"{csv_path}: no '{plane}' column (columns: {', '.join(cols)}); a pretraining "
                             "manifest needs one path column per plane")
        out = []
        for row in reader:
            value = (row.get(column) or "").strip()
            if value:
                p = Path(value)
                out.append(p if p.is_absolute() else (csv_path.parent / p))
    return out


def list_sources(data: list[str | Path], plane: str) -> list[Path]:
    files: list[Path] = []
    for entry in data:
        p = Path(entry)
        if p.is_dir():
            found = _volume_files(p)
            if not found:
                raise InputError(f"{p}: no NIfTI/NRRD/MHA volumes found in this folder")
            files += found
        elif p.suffix.lower() == ".csv":
            if not p.is_file():
                raise InputError(f"manifest not found: {p}")
            files += _manifest_paths(p, plane)
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"data source not found: {p} (give a manifest .csv, a folder or a volume file)")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise InputError(f"{len(missing)} listed volume(s) do not exist, e.g. {missing[0]}")
    return files


def _echo_images(path: Path, echoes):
    """Yield (echo or None, 3D sitk image)."""
    import SimpleITK as sitk

    from ..io.volumes import check_volume_path, select_echo

    check_volume_path(path)  # data files next to the header, never a device; not one of our outputs
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError:
        raise InputError(f"{path}: cannot read as an image") from None
    count = image.GetSize()[3] if image.GetDimension() == 4 else image.GetNumberOfComponentsPerPixel()
    if image.GetDimension() == 3 and image.GetNumberOfComponentsPerPixel() == 1:
        yield None, image
        return
    chosen = range(1, count + 1) if echoes == "all" else [int(echoes or 1)]
    for e in chosen:
        img, _ = select_echo(image, e, path)
        yield e, img


def _load_source(path: Path, plane: str, depth: int, size: tuple[int, int], mode: str, echoes,
                 reformat: bool) -> tuple[list[VolumeItem], list[str]]:
    """One source file → (its preprocessed volumes, [its name] if it was skipped as another plane)."""
    import SimpleITK as sitk

    from ..io.planes import detect_plane, reformat_to_planes
    from ..io.preprocess import preprocess

    items, skipped = [], []
    for echo, image in _echo_images(path, echoes):
        image = sitk.Cast(image, sitk.sitkFloat32)
        native, _ = detect_plane(image)
        reformatted = native != plane
        if reformatted:
            if not reformat:
                skipped.append(path.name)
                continue
            image = reformat_to_planes(image)[plane]
        arr, _ = preprocess(image, mode=mode, plane=plane, depth=depth, size=size)
        items.append(VolumeItem(str(path), echo, plane, reformatted, np.ascontiguousarray(arr, dtype=np.float32)))
    return items, skipped


def _load_source_in_worker(args):
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)  # the pool is the parallelism
    return _load_source(*args)


def load_plane_volumes(data: list[str | Path], plane: str, depth: int, size: tuple[int, int],
                       mode: str = "released", echoes="all", reformat: bool = True,
                       log=print, workers: int = 1) -> list[VolumeItem]:
    """Read and preprocess every volume of ``data`` for ``plane`` → list of VolumeItem ([D, H, W]).

    ``workers`` > 1 reads the files in that many processes (same items, same order)."""
    if plane not in PLANES:
        raise InputError(f"unknown plane {plane!r}; choose one of {', '.join(PLANES)}")
    jobs = [(path, plane, depth, tuple(size), mode, echoes, reformat) for path in list_sources(data, plane)]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
            results = list(pool.map(_load_source_in_worker, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        results = [_load_source(*job) for job in jobs]
    items = [item for got, _ in results for item in got]
    skipped = [name for _, names in results for name in names]
    if skipped:
        log(f"skipped {len(skipped)} volume(s) not acquired in the {plane} plane (reformatting is off)")
    if not items:
        raise InputError(f"no usable {plane} volumes in {', '.join(map(str, data))}")
    return items


# -- augmentation ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Augment:
    """Light, anatomy-preserving augmentation: left-right mirror, intensity gamma/scale jitter and a
    small in-plane shift (edge-replicated). All draws come from the generator passed in."""

    flip_prob: float = 0.5
    gamma: tuple[float, float] = (0.8, 1.25)
    scale: tuple[float, float] = (0.9, 1.1)
    max_shift: int = 4  # voxels, in H and W
    enabled: bool = True

    def to_dict(self) -> dict:
        return {"flip_prob": self.flip_prob, "gamma": list(self.gamma), "scale": list(self.scale),
                "max_shift": self.max_shift, "enabled": self.enabled}

    def __call__(self, x: torch.Tensor, plane: str, gen: torch.Generator) -> torch.Tensor:
        """x: [D, H, W] in [-1, 1] → augmented copy (always consumes the same number of draws)."""
        u = torch.rand(5, generator=gen, dtype=torch.float64).tolist()
        if not self.enabled:
            return x
        if u[0] < self.flip_prob:
            x = torch.flip(x, dims=(LEFT_RIGHT_AXIS[plane],))
        g = float(np.exp(np.log(self.gamma[0]) + u[1] * (np.log(self.gamma[1]) - np.log(self.gamma[0]))))
        s = self.scale[0] + u[2] * (self.scale[1] - self.scale[0])
        x01 = ((x + 1) * 0.5).clamp(0, 1) ** g
        x = (2 * (x01 * s).clamp(0, 1) - 1)
        if self.max_shift:
            k = self.max_shift
            dh = int(round((2 * u[3] - 1) * k))
            dw = int(round((2 * u[4] - 1) * k))
            if dh or dw:
                padded = torch.nn.functional.pad(x[None], (k, k, k, k), mode="replicate")[0]
                h, w = x.shape[-2:]
                x = padded[:, k - dh:k - dh + h, k - dw:k - dw + w]
        return x.contiguous()


@dataclass(frozen=True)
class RandomCrop:
    """A random ``size`` (D, H, W) sub-volume: smaller inputs make a step cheaper (more samples per
    second on a CPU), and crops of larger volumes show the model more detail. Draws three numbers
    from the generator per call, whatever the sizes, so the stream of draws has a fixed shape."""

    size: tuple[int, int, int]

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        u = torch.rand(3, generator=gen, dtype=torch.float64).tolist()
        starts = [int(ui * (n - c + 1)) for ui, n, c in zip(u, x.shape, self.size)]
        (d, h, w), (cd, ch, cw) = starts, self.size
        return x[d:d + cd, h:h + ch, w:w + cw]


class BatchStream:
    """Deterministic, resumable stream of index batches over a DistributedSampler.

    The position is fully described by the number of batches already drawn, so resuming needs no
    saved iterator state: the sampler is re-seeded per epoch (``set_epoch``) and fast-forwarded.
    """

    def __init__(self, n_items: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        from torch.utils.data import DistributedSampler

        self.sampler = DistributedSampler(range(n_items), num_replicas=world_size, rank=rank,
                                          shuffle=shuffle, seed=seed, drop_last=False)
        self.batch_size = batch_size
        self._epoch, self._buffer = 0, []

    def _fill(self):
        self.sampler.set_epoch(self._epoch)
        self._buffer += list(self.sampler)
        self._epoch += 1

    def next(self) -> list[int]:
        while len(self._buffer) < self.batch_size:
            self._fill()
        batch, self._buffer = self._buffer[:self.batch_size], self._buffer[self.batch_size:]
        return batch

    def skip(self, n_batches: int) -> None:
        for _ in range(n_batches):
            self.next()

    @property
    def epoch(self) -> int:
        return self._epoch
