"""Tissue classes of the synthetic knee and their MR properties at 1.5 T and 3 T.

The values are rounded literature values for in-vivo knee tissue, enough to give the right
contrast ordering on each sequence; they are not a quantitative-MRI reference.

* Cartilage, synovial fluid, muscle, bone marrow, subcutaneous fat (T1/T2 at 1.5 T and 3 T):
  Gold GE et al., "Musculoskeletal MRI at 3.0 T: relaxation times and image contrast",
  AJR 2004;183:343-351 (e.g. cartilage T1 ~1024 ms @1.5 T / ~1240 ms @3 T; synovial fluid T1
  ~3620 / ~4813 ms, T2 ~767 / ~325 ms; muscle T1 ~1008 / ~1420 ms; marrow T1 ~288 / ~371 ms;
  fat T1 ~343 / ~382 ms).
* Muscle, cartilage, tendon/ligament-like tissue: Stanisz GJ et al., "T1, T2 relaxation and
  magnetization transfer in tissue at 3T", MRM 2005;54:507-512.
* Short-T2 tissues (tendon, ligament, meniscus, cortical bone): Du J, Bydder GM et al., UTE
  reviews (e.g. Chang EY, Du J, Chung CB, JMRI 2015;41:870-883): T2* of tendon ~1-2 ms,
  ligament ~5 ms, meniscus ~5-10 ms, cortical bone ~0.4 ms.
* Cartilage and muscle T2 were set to mid-range literature values (cartilage 35-45 ms mid zone,
  muscle 32-35 ms) rather than to one study, and PD is an *effective* proton density under a
  multi-slice 2D turbo-spin-echo protocol (it folds in incidental magnetisation transfer, which
  darkens muscle and fibrous tissue, Wolff & Balaban MRM 1989;10:135-144).
* ``ff`` is the fat fraction of the tissue's signal: spectral fat saturation / water excitation
  removes ``ff * (1 - residual)`` of it.

Lesion tissues (oedema, torn-ligament fluid, meniscal cleft) are not in this table: they are
blends of a host tissue towards fluid computed per case (``blend``), so that the ``difficulty``
knob can scale lesion contrast continuously.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Tissue ids of the synthetic tissue map (uint8). Keep below 32 (5 bits, see deform.pack).
AIR = 0
SKIN = 1
FAT = 2
MUSCLE = 3
CORTEX = 4
MARROW = 5
CARTILAGE = 6
MENISCUS = 7
LIGAMENT = 8
TENDON = 9
FLUID = 10
CAPSULE = 11
# lesion tissues (parameters filled per case by blending)
TORN_LIGAMENT = 12      # fluid-filled gap of a torn ligament
LIGAMENT_OEDEMA = 13    # intrasubstance signal / thickened ligament
MARROW_OEDEMA = 14      # bone bruise
SOFT_OEDEMA = 15        # periligamentous / retinacular oedema in fat
MENISCAL_CLEFT = 16     # fluid-signal line in a torn meniscus
N_TISSUES = 17

TISSUE_NAMES = {
    AIR: "air", SKIN: "skin", FAT: "subcutaneous_fat", MUSCLE: "muscle", CORTEX: "cortical_bone",
    MARROW: "bone_marrow", CARTILAGE: "hyaline_cartilage", MENISCUS: "meniscus",
    LIGAMENT: "ligament", TENDON: "tendon", FLUID: "joint_fluid", CAPSULE: "joint_capsule",
    TORN_LIGAMENT: "torn_ligament", LIGAMENT_OEDEMA: "ligament_oedema",
    MARROW_OEDEMA: "marrow_oedema", SOFT_OEDEMA: "soft_tissue_oedema",
    MENISCAL_CLEFT: "meniscal_cleft",
}


@dataclass(frozen=True)
class Relaxation:
    """One tissue at one field strength (times in ms, pd and ff in 0..1)."""

    t1: float
    t2: float
    t2s: float
    pd: float
    ff: float = 0.0


# name: (1.5 T, 3 T)
_TABLE: dict[int, tuple[Relaxation, Relaxation]] = {
    AIR: (Relaxation(1000, 1, 1, 0.0), Relaxation(1000, 1, 1, 0.0)),
    SKIN: (Relaxation(700, 40, 25, 0.70), Relaxation(850, 35, 20, 0.70)),
    FAT: (Relaxation(343, 58, 40, 0.90, 0.95), Relaxation(382, 68, 35, 0.90, 0.95)),
    MUSCLE: (Relaxation(1008, 35, 28, 0.65), Relaxation(1420, 32, 22, 0.65)),
    CORTEX: (Relaxation(300, 1.0, 0.5, 0.10), Relaxation(350, 0.8, 0.4, 0.10)),
    MARROW: (Relaxation(288, 50, 10, 0.85, 0.85), Relaxation(371, 50, 8, 0.85, 0.85)),
    CARTILAGE: (Relaxation(1024, 40, 22, 0.85), Relaxation(1240, 37, 18, 0.85)),
    MENISCUS: (Relaxation(1000, 12, 8, 0.60), Relaxation(1150, 10, 6, 0.60)),
    LIGAMENT: (Relaxation(900, 8, 5, 0.45), Relaxation(1050, 7, 4, 0.45)),
    TENDON: (Relaxation(900, 4, 2, 0.40), Relaxation(1050, 3, 1.5, 0.40)),
    FLUID: (Relaxation(3620, 767, 300, 1.00), Relaxation(4813, 325, 200, 1.00)),
    CAPSULE: (Relaxation(950, 15, 8, 0.55), Relaxation(1100, 12, 6, 0.55)),
}

# host tissue and maximum blend towards fluid for each lesion tissue (scaled by lesion contrast)
LESION_HOSTS = {
    TORN_LIGAMENT: (LIGAMENT, 0.85),
    LIGAMENT_OEDEMA: (LIGAMENT, 0.45),
    MARROW_OEDEMA: (MARROW, 0.70),
    SOFT_OEDEMA: (FAT, 0.70),
    MENISCAL_CLEFT: (MENISCUS, 0.80),
}


def blend(a: Relaxation, b: Relaxation, w: float) -> Relaxation:
    """Tissue ``a`` moved a fraction ``w`` towards ``b`` (rates blended, as for water pools)."""
    w = float(np.clip(w, 0.0, 1.0))

    def rate(x, y):
        return 1.0 / ((1 - w) / x + w / y)

    return Relaxation(t1=rate(a.t1, b.t1), t2=rate(a.t2, b.t2), t2s=rate(a.t2s, b.t2s),
                      pd=(1 - w) * a.pd + w * b.pd, ff=(1 - w) * a.ff + w * b.ff)


def tissue_table(field_t: float, lesion_contrast: float = 1.0) -> list[Relaxation]:
    """Per-tissue properties (indexed by tissue id) at ``field_t`` (1.5 or 3.0).

    ``lesion_contrast`` in 0..1 scales how far each lesion tissue moves from its host towards
    fluid (0 = invisible lesion, 1 = full fluid-like contrast).
    """
    col = 0 if field_t < 2.25 else 1
    table: list[Relaxation | None] = [None] * N_TISSUES
    for tid, pair in _TABLE.items():
        table[tid] = pair[col]
    fluid = table[FLUID]
    for tid, (host, wmax) in LESION_HOSTS.items():
        table[tid] = blend(table[host], fluid, wmax * lesion_contrast)
    return table  # type: ignore[return-value]
