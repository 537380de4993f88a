"""``orthodiffusion demo``: predict on the embedded real knee and write an HTML report."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the demo model on the embedded sample knee and write an HTML report",
                       description="Runs `predict` on Resources/SampleData/knee_mese_t2_sag_echo1.nii.gz (a real "
                                   "sagittal knee; coronal and axial are reformats of it) with the knee-demo model "
                                   "and writes report.html. Research use only, not for clinical decisions.")
    p.add_argument("--out", default="demo-output", help="output folder (default demo-output)")
    p.add_argument("--model", default="knee-demo")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    p.add_argument("--draws", type=int, default=None, help="noise draws per plane (default: the model's, 3 for knee-demo)")
    p.add_argument("--anonymize", action="store_true",
                   help="show a pseudonym instead of the case id in report.html (see docs/pipeline.md)")
    p.set_defaults(func=_run)


def run_demo(out="demo-output", model="knee-demo", device="cpu", draws=None, log=print, anonymize=False):
    import time
    from pathlib import Path

    from ..ownership import claim_folder, record_files
    from ..jobs import PredictJob
    from ..inference.predict import predict_study
    from ..reports.case import write_report
    from ..resources import sample_knee_path

    t0 = time.perf_counter()
    claim_folder(out, "demo")
    job = PredictJob(inputs=[str(sample_knee_path())], out=str(Path(out) / "result"), model=model, device=device,
                     draws=draws, reformat=True, case_id="sample-knee")
    pred = predict_study(job, log=log)
    notes = ["Input: one real knee (3 T sagittal multi-echo spin echo, first echo; MIT licence). Only the sagittal "
             "series is real: the coronal and axial inputs are reformats of it (4 mm slices, blurred across)."]
    report = write_report(pred, Path(out) / "report.html", title="OrthoDiffusion demo: sample knee", notes=notes,
                          wall_s=time.perf_counter() - t0, anonymize=anonymize)
    record_files(out, "demo", "result", "report.html")
    return pred, report, time.perf_counter() - t0


def _run(args) -> int:
    from .. import DISCLAIMER
    from .predict import _print_summary

    pred, report, wall = run_demo(args.out, args.model, args.device, args.draws, log=lambda m: print(m, flush=True),
                                  anonymize=args.anonymize)
    _print_summary(pred)
    print(f"report: {report.resolve()}  ({wall:.1f} s)  [{DISCLAIMER}]")
    return 0
