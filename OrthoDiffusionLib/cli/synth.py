"""``orthodiffusion synth``: generate the synthetic knee test bed (NIfTI + manifest.csv)."""

from __future__ import annotations

import argparse


def _prevalence(text: str) -> dict[str, float]:
    """'0.25' (every finding) or 'ACL=0.3,MM=0.2' (others keep 0.25)."""
    from ..errors import InputError
    from ..synth.findings import FINDING_KEYS

    out = {k: 0.25 for k in FINDING_KEYS}
    text = text.strip()
    try:
        if "=" not in text:
            v = float(text)
            return {k: v for k in FINDING_KEYS} if 0 <= v <= 1 else _bad(text)
        for part in text.split(","):
            k, v = part.split("=")
            k = k.strip().upper()
            if k not in FINDING_KEYS:
                raise InputError(f"--prevalence: unknown finding '{k}' (known: {', '.join(FINDING_KEYS)})")
            out[k] = float(v)
            if not 0 <= out[k] <= 1:
                _bad(text)
    except ValueError:
        _bad(text)
    return out


def _finding_difficulty(text: str) -> dict[str, float]:
    """'0.5' (every finding) or 'MM=0.2,EFFU=0.8' (others keep the calibrated defaults)."""
    from ..errors import InputError
    from ..synth.findings import FINDING_KEYS
    from ..synth.generate import DEFAULT_FINDING_DIFFICULTY

    def bad(why: str):
        raise InputError(f"--finding-difficulty '{text}': {why}; give one difficulty (0-1) or KEY=D pairs, "
                         f"e.g. MM=0.2,EFFU=0.8 (keys: {', '.join(FINDING_KEYS)})")

    out = dict(DEFAULT_FINDING_DIFFICULTY)
    text = text.strip()
    if "=" not in text:
        try:
            v = float(text)
        except ValueError:
            bad("not a number")
        if not 0.0 <= v <= 1.0:
            bad(f"{v:g} is outside 0..1")
        return {k: v for k in FINDING_KEYS}
    for part in text.split(","):
        if part.count("=") != 1:
            bad(f"'{part.strip()}' is not KEY=D")
        k, v = (x.strip() for x in part.split("="))
        k = k.upper()
        if k not in FINDING_KEYS:
            bad(f"unknown finding '{k}'")
        try:
            out[k] = float(v)
        except ValueError:
            bad(f"'{v}' is not a number")
        if not 0.0 <= out[k] <= 1.0:
            bad(f"{k}={out[k]:g} is outside 0..1")
    return out


def _bad(text):
    from ..errors import InputError

    raise InputError(f"--prevalence '{text}': give one probability (0-1) or KEY=P pairs, e.g. ACL=0.3,MM=0.2")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth", help="generate a synthetic knee MRI cohort (test bed, not clinical data)",
        description="Generate synthetic knee MRI (sagittal, coronal, axial 2D stacks, label maps, "
                    "knee-8 findings, EHR) and a cohort manifest. A test bed, not clinical evidence.")
    p.add_argument("--n", type=int, default=200, help="number of cases (default 200)")
    p.add_argument("--out", required=True, help="output folder (manifest.csv + cases/)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    p.add_argument("--centers", default="center_a,center_b,center_c",
                   help="comma-separated center profiles (default all three)")
    p.add_argument("--prevalence", default="0.25", help="'0.25' or 'ACL=0.3,MM=0.2,...'")
    p.add_argument("--difficulty", type=float, default=0.5,
                   help="0 (obvious lesions, high SNR) .. 1 (subtle): lesion contrast and SNR of every "
                        "finding; default 0.5")
    p.add_argument("--finding-difficulty", default=None,
                   help="per-finding lesion size/severity, 0 (large) .. 1 (subtle): one value for all or "
                        "'MM=0.2,EFFU=0.8' (others keep the calibrated defaults, docs/testbed.md); "
                        "'0.5' with --difficulty 0.5 reproduces cohorts of the generator before this option")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--working-mm", type=float, default=0.8, help="working grid spacing (mm)")
    p.add_argument("--no-motion", action="store_true", help="disable motion ringing")
    p.add_argument("--base-maps", default="a,b",
                   help="anatomy maps to draw from: a, b or a,b (default); e.g. train on a, test on b to "
                        "measure anatomy transfer (each case's base map is in manifest.csv and case.json)")
    p.add_argument("--randomize", action="store_true",
                   help="domain randomisation on top of the physics (random per-tissue intensities, bias, "
                        "noise, blur, resolution, slice thickness, gamma, contrast inversion; docs/testbed.md); "
                        "every drawn value goes into case.json. Off: the documented test bed, bit for bit")
    p.add_argument("--randomize-strength", type=float, default=None, metavar="S",
                   help="0 (physics values) .. 1 (full ranges, default); needs --randomize")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..errors import InputError
    from ..synth.contrast import CENTERS
    from ..synth.generate import SynthConfig, synthesize_cohort
    from ..synth.template import BASE_MAPS

    if args.n < 1:
        raise InputError("--n must be at least 1")
    if not 0.0 <= args.difficulty <= 1.0:
        raise InputError("--difficulty must be within 0..1")
    if args.workers < 1:
        raise InputError("--workers must be at least 1")
    if not 0.4 <= args.working_mm <= 2.0:
        raise InputError("--working-mm must be within 0.4..2.0")
    centers = tuple(c.strip() for c in args.centers.split(",") if c.strip())
    bad = [c for c in centers if c not in CENTERS]
    if bad or not centers:
        raise InputError(f"--centers: unknown {', '.join(bad) or '(none given)'} (known: {', '.join(CENTERS)})")
    # sorted: "b,a" makes the same cohort as "a,b"
    base_maps = tuple(sorted({b.strip().lower() for b in args.base_maps.split(",") if b.strip()}))
    bad = [b for b in base_maps if b not in BASE_MAPS]
    if bad or not base_maps:
        raise InputError(f"--base-maps: unknown {', '.join(bad) or '(none given)'} (known: {', '.join(BASE_MAPS)}; "
                         "e.g. --base-maps a)")
    if args.randomize_strength is not None and not args.randomize:
        raise InputError("--randomize-strength needs --randomize")
    strength = 1.0 if args.randomize_strength is None else args.randomize_strength
    if not 0.0 <= strength <= 1.0:
        raise InputError("--randomize-strength must be within 0..1")
    extra = {} if args.finding_difficulty is None else {"finding_difficulty": _finding_difficulty(args.finding_difficulty)}
    cfg = SynthConfig(seed=args.seed, centers=centers, prevalence=_prevalence(args.prevalence),
                      difficulty=args.difficulty, working_mm=args.working_mm, motion=not args.no_motion,
                      base_maps=base_maps, randomize=args.randomize, randomize_strength=strength, **extra)
    path = synthesize_cohort(args.n, args.out, cfg, workers=args.workers, progress=not args.quiet)
    kind = f"domain-randomised (strength {strength:g}) " if args.randomize else ""
    print(f"wrote {args.n} {kind}synthetic cases and {path} (synthetic test bed, not clinical data)")
    return 0
