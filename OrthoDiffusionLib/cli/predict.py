"""``orthodiffusion predict``: one study (or a cohort manifest) → result folder(s).

Stage tags on stdout for the Slicer module: [loading] [preprocess] [features] [segment]
[diagnose] [writing].
"""

from __future__ import annotations

from ..planes import PLANES


def register(sub) -> None:
    p = sub.add_parser("predict", help="segment and diagnose one knee study (or a cohort manifest)",
                       description="Study = a DICOM folder, up to three NIfTI/NRRD files (one per plane) or one 3D "
                                   "volume (reformatted into the three planes). Writes labels.nrrd, "
                                   "segmentation.seg.nrrd, uncertainty.nrrd, findings.json/.csv, result.json. "
                                   "Research use only, not for clinical decisions.")
    p.add_argument("study", nargs="*", help="DICOM folder, NIfTI/NRRD files, or one 3D volume")
    for plane in PLANES:
        p.add_argument(f"--{plane}", default=None, help=f"{plane} series (file or DICOM folder)")
    p.add_argument("--volume", default=None, help="one 3D volume, reformatted into the three planes")
    p.add_argument("--manifest", default=None, help="cohort mode: predict every row of this manifest CSV")
    p.add_argument("--workers", type=int, default=1,
                   help="cohort mode: worker processes, each loads the model once (default 1); "
                        "under torchrun each rank predicts rows RANK::WORLD_SIZE")
    p.add_argument("--threads", type=int, default=None,
                   help="cohort mode: torch threads per worker (default: CPU cores // (workers x local ranks))")
    p.add_argument("--model", default="knee-demo", help="model id or folder with model.json (default knee-demo)")
    p.add_argument("--heads-version", default=None, help="head-set version (default: current)")
    p.add_argument("--out", required=True, help="output folder (cohort mode: one sub-folder per study)")
    p.add_argument("--ehr", default=None, help="age=54,sex=F,height_cm=170,weight_kg=70 or a JSON file")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--draws", type=int, default=None,
                   help="noise draws K per plane; spread = std over draws (default: the model's, 3 for knee-demo, "
                        "2 for released-size imported backbones)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--reference", default=None, choices=list(PLANES),
                   help="grid of the label map (default: sagittal when present)")
    p.add_argument("--reformat", dest="reformat", action="store_true", default=None,
                   help="reformat the best series into the planes no native series covers")
    p.add_argument("--no-reformat", dest="reformat", action="store_false")
    p.add_argument("--echo", type=int, default=None, help="echo (from 1) of a multi-echo input")
    p.add_argument("--windows", default=None, choices=["central", "sliding"],
                   help="segment the published central window of each series, or every slice with overlapping "
                        "windows (default: the model's setting)")
    p.add_argument("--case-id", default=None)
    p.add_argument("--cache", default=None, help="feature cache folder (default: per-user cache)")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--dicom-seg", action="store_true",
                   help="also write segmentation.dcm (DICOM SEG referencing the reference series; DICOM input only)")
    p.add_argument("--anonymize", action="store_true",
                   help="replace patient name/id (and input paths, case id) in the outputs by a pseudonym")
    p.add_argument("--pseudonym", default=None, help="the pseudonym for --anonymize (default: anon-<HMAC of the id>)")
    p.add_argument("--anonymize-salt", default=None,
                   help="secret salt: the same patient gets the same pseudonym in every run (default: random)")
    p.add_argument("--max-voxels", type=int, default=512 ** 3,
                   help="refuse an image above this many voxels, read from its header before loading (default 512^3)")
    p.add_argument("--max-memory", type=float, default=None, metavar="GB",
                   help="refuse when the memory estimate is above this (default: the memory available)")
    p.set_defaults(func=_run)


def template_from_args(args):
    """A ``PredictJob`` of the arguments' shared settings (cohort mode, rank): every job field the
    parser has; the per-case ones come from each manifest row."""
    from dataclasses import fields

    from ..jobs import PredictJob

    return PredictJob(**{f.name: getattr(args, f.name) for f in fields(PredictJob)
                         if f.name not in ("inputs", "planes", "out") and hasattr(args, f.name)})


def job_from_args(args):
    from ..errors import UserError
    from ..jobs import PredictJob

    inputs = list(args.study)
    planes = {p: getattr(args, p) for p in PLANES if getattr(args, p)}  # given planes: not detected
    reformat = args.reformat
    if args.volume:
        inputs.append(args.volume)
        if reformat is None and len(inputs) == 1 and not planes:
            reformat = True
    if not inputs and not planes:
        raise UserError("no input study: give paths, --sagittal/--coronal/--axial, --volume or --manifest")
    return PredictJob(inputs=inputs, planes=planes, out=args.out, model=args.model, device=args.device, draws=args.draws,
                      seed=args.seed, reference=args.reference, ehr=args.ehr, reformat=reformat, echo=args.echo,
                      heads_version=args.heads_version, cache=args.cache, no_cache=args.no_cache,
                      case_id=args.case_id, max_voxels=args.max_voxels, max_memory_gb=args.max_memory,
                      windows=args.windows)


def _print_summary(pred) -> None:
    from .. import DISCLAIMER

    r = pred.result
    print(f"planes used: {', '.join(r.planes_present)}"
          + (f" (reformatted: {', '.join(r.provenance['reformatted_planes'])})" if r.provenance["reformatted_planes"]
             else "") + f"; reference grid: {r.reference_plane}")
    for w in pred.warnings:
        print(f"warning: {w}")
    for f in r.findings:
        dom = f.dominant_plane()
        print(f"  {f.key:<5} p={f.probability:.3f} ±{f.spread:.3f} {'POS' if f.decision else 'neg'} "
              f"(thr {f.threshold:.2f}; top plane {dom} {f.weight(dom):.2f})")
    t = r.timings
    print("timings: " + ", ".join(f"{k}={v}" for k, v in t.items()))
    print(f"wrote {pred.out_dir}  [{DISCLAIMER}]")


def _run(args) -> int:
    if args.manifest:
        from ..inference.cohort import predict_cohort

        if args.dicom_seg or args.anonymize or args.pseudonym or args.anonymize_salt:
            from ..errors import UserError

            raise UserError("--dicom-seg/--anonymize apply to one study for now; run predict per study for them")
        return predict_cohort(args.manifest, args.out, template_from_args(args), args.workers, args.threads)
    from ..inference.predict import predict_study

    from ..results.exports import export_case

    job = job_from_args(args)

    def exports(pred):  # on the staged folder: an anonymised result never appears un-scrubbed
        export_case(pred, job, dicom_seg=args.dicom_seg, anonymize=args.anonymize, pseudonym=args.pseudonym,
                    salt=args.anonymize_salt, log=lambda m: print(m, flush=True))

    pred = predict_study(job, log=lambda m: print(m, flush=True), after_write=exports)
    _print_summary(pred)
    return 0
