"""Make docs/testbed_figure.png: a real sagittal knee next to the synthetic test bed.

Top row: the real sample knee (3 T GE sagittal 2D multi-echo spin echo, first echo TE 6.3 ms,
PD-like; Resources/SampleData) next to one synthetic case (PD, no fat suppression, 3 T) in its
sagittal, coronal and axial stacks. Lower rows: one synthetic case per knee-8 finding (PD-FS,
default difficulty 0.5), on the slice with the most lesion voxels, lesion outlined in red.
The synthetic images are a TEST BED, not clinical data.

    python docs/scripts/make_testbed_figure.py [--out docs/testbed_figure.png]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from OrthoDiffusionLib.resources import sample_knee_path  # noqa: E402
from OrthoDiffusionLib.synth.acquisition import render_labels  # noqa: E402
from OrthoDiffusionLib.synth.findings import FINDING_KEYS  # noqa: E402
from OrthoDiffusionLib.synth.generate import SynthConfig, generate_case  # noqa: E402

FINDING_PLANE = {"ACL": "sagittal", "PCL": "sagittal", "MM": "sagittal", "LM": "sagittal",
                 "MCL": "coronal", "LCL": "coronal", "PD": "axial", "EFFU": "sagittal"}


def show(ax, img2d, title, outline=None):
    lo, hi = np.percentile(img2d, [1, 99.5])
    ax.imshow(img2d.T, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
    if outline is not None and outline.any():
        ax.contour(outline.T.astype(float), levels=[0.5], colors="red", linewidths=0.6)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def real_sagittal():
    import SimpleITK as sitk

    img = sitk.ReadImage(str(sample_knee_path()))
    arr = sitk.GetArrayFromImage(img).transpose(2, 1, 0).astype(np.float32)
    d = np.array(img.GetDirection()).reshape(3, 3)
    # sample: axis 0 ~ P, axis 1 ~ -I (S), axis 2 ~ -L; show anterior left, superior up
    if d[2, 1] > 0:
        arr = arr[:, ::-1, :]
    return arr[:, :, arr.shape[2] // 2], img.GetSpacing()


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(REPO / "docs" / "testbed_figure.png"))
    ap.add_argument("--seed", type=int, default=2024)
    args = ap.parse_args(argv)
    none = {k: 0 for k in FINDING_KEYS}
    fig, axes = plt.subplots(3, 4, figsize=(13, 10.4))
    real, sp = real_sagittal()
    show(axes[0, 0], real, f"REAL sample knee: sagittal 2D SE\n3 T, TE 6.3 ms, {sp[0]:.3g} mm x {sp[2]:.3g} mm slices")
    cfg = SynthConfig(seed=args.seed, centers=("center_a",), base_maps=("a",), motion=False,
                      protocol={"sagittal": "PD", "coronal": "PD", "axial": "PD"})
    case = generate_case(0, cfg, force_findings=none)
    for j, plane in enumerate(("sagittal", "coronal", "axial"), start=1):
        st = case.stacks[plane]
        k = st.image.shape[2] // 2
        show(axes[0, j], st.image[:, :, k],
             f"synthetic {plane} {st.sequence.name} {case.meta['field_strength']:g} T\n"
             f"{st.geometry.spacing[0]:.3g} mm, {st.geometry.thickness:g} mm slices")
    base = SynthConfig(seed=args.seed, centers=("center_a",), base_maps=("a",), motion=False)
    for n, key in enumerate(FINDING_KEYS):
        case = generate_case(1 + n, replace(base), force_findings={**none, key: 1})
        plane = FINDING_PLANE[key]
        st = case.stacks[plane]
        les = render_labels(case.lesion.astype(np.uint8), case.grid, st.geometry)
        k = int(np.argmax(les.sum(axis=(0, 1))))
        show(axes[1 + n // 4, n % 4], st.image[:, :, k],
             f"synthetic {key} ({plane} {st.sequence.name})", outline=les[:, :, k] > 0)
    fig.suptitle("OrthoDiffusion synthetic knee test bed (not clinical data): real sample vs synthetic; "
                 "one case per knee-8 finding (red: lesion)", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
