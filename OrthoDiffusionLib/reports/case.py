"""Self-contained HTML report of one prediction (``Resources/Templates/case.html.j2``; images
embedded as PNG data URIs). Research use only, not for clinical decisions."""

from __future__ import annotations

from pathlib import Path

from ..planes import PLANES
from .figures import findings_chart, plane_panel
from .render import render


def _planes_line(r) -> str:
    prov = r.provenance
    real = [p for p in r.planes_present if p not in prov["reformatted_planes"]]
    return (f"Planes used: {', '.join(r.planes_present)}. Acquired (real): {', '.join(real) or 'none'}. "
            f"Reformatted: {', '.join(prov['reformatted_planes']) or 'none'}. "
            f"Missing: {', '.join(prov['planes_missing']) or 'none'}. Label map on the {r.reference_plane} grid.")


def _timing_rows(r, wall_s) -> list[tuple]:
    rows = [(s, f"{v['seconds']:.2f}", f"{v['peak_rss_mb']:.0f}") for s, v in r.provenance.get("stages", {}).items()]
    if "writing_s" in r.timings:
        rows.append(("writing", f"{r.timings['writing_s']:.2f}", ""))
    if wall_s is not None:
        rows.append(("whole command (wall)", f"{wall_s:.1f}", ""))
    return rows


def write_report(pred, path, title: str = "OrthoDiffusion result", notes: list[str] | None = None,
                 wall_s: float | None = None, anonymize: bool = False, salt: str | None = None) -> Path:
    """``anonymize``: the case id is replaced by a pseudonym (see results/anonymize.py)."""
    from ..labelsets import load_label_set
    from ..ownership import HTML_SIGNATURE, check_file_replaceable
    from ..results.anonymize import Pseudonymizer
    from ..storage import atomic_write_text

    check_file_replaceable(path, HTML_SIGNATURE)  # never over a file the tool did not write
    r = pred.result
    structures = load_label_set(r.label_sets["structures"])  # the model's, as the result records
    prov = r.provenance
    heads = prov["model"]["heads"]
    notes = list(notes or [])
    if heads.get("fitted_on_synthetic"):
        notes.append("The heads of this model were fitted on the synthetic test bed (generated knees), not on "
                     "patients: the numbers below show the pipeline working, they are not clinical performance.")
    doc = render(
        "case.html.j2", title=title, case=Pseudonymizer(anonymize, salt)(r.case_id),
        model=f"{r.model['id']} {r.model['version']}", heads=r.head_version, device=prov.get("device", ""),
        notes=[*notes, _planes_line(r)], structures_set=r.label_sets["structures"], findings_set=r.label_sets["findings"],
        plane_panel=plane_panel(pred, structures), findings_chart=findings_chart(pred),
        findings_rows=[(f.key, f.name, f"{f.probability:.3f}", f"±{f.spread:.3f}", f"{f.threshold:.2f}",
                        "positive" if f.decision else "negative", *(f"{f.weight(p):.2f}" for p in PLANES))
                       for f in r.findings],
        volume_rows=[(lab["name"], f"{pred.structure_volumes_ml.get(lab['key'], 0.0):.2f}")
                     for lab in structures.labels],
        timing_rows=_timing_rows(r, wall_s), warnings=pred.warnings,
        written_by=prov.get("orthodiffusion_version", ""),
        backbones=", ".join(f"{p} {s[:12]}" for p, s in prov["model"]["backbones"].items()),
        heads_sha=str(heads.get("weights_sha256"))[:12])
    return atomic_write_text(Path(path), doc)
