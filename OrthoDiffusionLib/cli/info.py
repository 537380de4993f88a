"""``orthodiffusion info``: what the IO layer makes of a study (planes, geometry, metadata, warnings)."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "info", help="list the planes, geometry and metadata found in a study",
        description="Read DICOM folders and/or NIfTI/NRRD/MHA files of one knee study and report the "
                    "sagittal/coronal/axial series found, their geometry, metadata and any warnings.")
    p.add_argument("study", nargs="+", help="DICOM folder(s) and/or volume file(s) of one study")
    p.add_argument("--echo", type=int, default=None, help="echo to use from a multi-echo (4D) series, from 1")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--reformat", dest="reformat", action="store_true", default=None,
                       help="reformat a 3D series into the planes that no series covers")
    group.add_argument("--no-reformat", dest="reformat", action="store_false",
                       help="never reformat (default: reformat a lone near-isotropic 3D series)")
    p.add_argument("--slice-mm", type=float, default=None,
                   help="slice spacing of reformatted views in mm (default: the coarsest source spacing)")
    p.add_argument("--ehr", default=None, help="JSON file with the patient's EHR variables (attached to the study)")
    p.add_argument("--hash", action="store_true", help="also print each plane volume's content hash")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..io import load_study, volume_hash
    from ..io.study import geometry_summary

    study = load_study(args.study, echo=args.echo, reformat=args.reformat, slice_mm=args.slice_mm,
                       ehr=_read_ehr(args.ehr))
    if args.json:
        report = study.to_dict()
        if args.hash:
            for plane, series in study.planes.items():
                report["planes"][plane]["volume_hash"] = volume_hash(series.image)
        print(json.dumps(report, indent=2))
        return 0
    print(f"planes: {', '.join(study.planes) or 'none'}")
    for plane, series in study.planes.items():
        info = series.info
        print(f"{plane}:")
        print(f"  source: {info.source}{'  (reformatted)' if info.reformatted else ''}")
        print(f"  geometry: {geometry_summary(info)}")
        print(f"  origin (LPS mm): {', '.join(f'{v:.2f}' for v in info.origin)}")
        meta = {"field strength (T)": info.field_strength_t, "manufacturer": info.manufacturer,
                "description": info.series_description, "modality": info.modality, "echo": info.echo}
        shown = [f"{k}: {v}" for k, v in meta.items() if v is not None]
        if shown:
            print(f"  {'; '.join(shown)}")
        if args.hash:
            print(f"  volume hash: {volume_hash(series.image)}")
    if study.ehr:
        print(f"ehr: {', '.join(sorted(study.ehr))}")
    for warning in study.warnings:
        print(f"warning: {warning}")
    return 0


def _read_ehr(path: str | None) -> dict | None:
    if path is None:
        return None
    import json

    from ..errors import InputError

    try:
        with open(path, encoding="utf-8") as f:
            ehr = json.load(f)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the EHR JSON ({type(exc).__name__}); give a JSON object file") from None
    if not isinstance(ehr, dict):
        raise InputError(f"{path}: the EHR JSON must be an object of name: value pairs")
    return ehr
