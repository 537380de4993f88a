"""The module's work without widgets: inputs -> predict -> scene -> correction -> fine-tune -> rollback.

Every step that runs the CLI takes ``on_done(ok)``: in Slicer the runner is asynchronous (a Qt timer
delivers the output), in tests :class:`process.BlockingRunner` calls it before ``start`` returns.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import DISCLAIMER
from ..jobs import FinetuneJob, PredictJob
from .commands import cli_device, cli_environment, finetune_command, predict_command, rollback_command
from .progress import ProgressTracker

Done = Callable[[bool], None]


@dataclass
class PreparedCase:
    """The files of one case as the CLI sees them; kept so the heads can run again after a fine-tune."""
    case_id: str
    inputs: dict                    # plane -> Path of the written volume
    reference: object               # the volume node results are placed next to
    ehr: dict | None
    out_dir: Path
    results: list = field(default_factory=list)  # result folders written for this case, oldest first


class CaseWorkflow:
    """Slicer-facing logic of OrthoDiffusion with the scene, the segmentations logic and the process
    runner passed in (``slicer.mrmlScene`` and ``slicer.modules.segmentations.logic()`` in Slicer)."""

    def __init__(self, scene, segmentations_logic, runner, python: str, lib_parent: str,
                 log: Callable[[str], None] = print, progress: Callable[[int, str], None] | None = None,
                 volume_writer=None):
        self.scene, self.segmentations_logic, self.runner = scene, segmentations_logic, runner
        self.python, self.lib_parent = python, str(lib_parent)
        self.log, self.progress = log, progress or (lambda percent, stage: None)
        self.volume_writer = volume_writer  # slicer.util.exportNode in Slicer; a detached storage node here
        self.case: PreparedCase | None = None
        self.nodes = None                   # mrml.case.CaseNodes of the last loaded result
        self._temp_dirs: list = []

    # ---- folders
    def new_output_folder(self, chosen: str | None = None) -> Path:
        """The user's folder, or a temporary one that :meth:`cleanup` removes."""
        if chosen:
            Path(chosen).mkdir(parents=True, exist_ok=True)
            return Path(chosen)
        d = Path(tempfile.mkdtemp(prefix="OrthoDiffusion-"))
        self._temp_dirs.append(d)
        return d

    def cleanup(self) -> None:
        """Stop a running command and remove the temporary folders (scene close, module cleanup)."""
        self.cancel()
        for d in self._temp_dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._temp_dirs.clear()
        self.case, self.nodes = None, None

    # ---- running the CLI
    @property
    def busy(self) -> bool:
        return self.runner.running

    def cancel(self) -> None:
        if self.runner.running:
            self.runner.cancel()
            self.log("cancel requested: the process tree was stopped")

    def _run(self, argv: list, device_choice: str, on_done: Done) -> None:
        tracker = ProgressTracker()
        self.log(" ".join(str(a) for a in argv))
        self.progress(2, "starting")

        def line(text: str) -> None:
            self.log(text)
            if tracker.feed(text):
                self.progress(tracker.percent, tracker.stage)

        def done(rc: int) -> None:
            tracker.finish(rc)
            self.progress(tracker.percent, tracker.stage)
            if rc != 0:
                self.log(f"OrthoDiffusion stopped with exit code {rc}" + (" (cancelled)" if rc < 0 else ""))
            on_done(rc == 0)

        self.runner.start(argv, cli_environment(self.lib_parent, device_choice), line, done)

    # ---- steps
    def prepare(self, volumes: dict, ehr: dict | None, out_dir: Path, reference=None) -> PreparedCase:
        """Write the input volumes as ``<case>_<plane>.nrrd`` with a per-patient case id."""
        from ..mrml.inputs import case_id_for, write_inputs

        if not volumes:
            raise ValueError("no input volume selected")
        reference = reference or volumes.get("sagittal") or next(iter(volumes.values()))
        case_id = case_id_for(self.scene, reference)
        paths = write_inputs(self.scene, volumes, Path(out_dir) / "inputs", case_id, writer=self.volume_writer)
        self.case = PreparedCase(case_id=case_id, inputs=paths, reference=reference, ehr=ehr, out_dir=Path(out_dir))
        return self.case

    def predict_job(self, model: str, device_choice: str, result_dir: Path) -> PredictJob:
        c = self.case
        # the plane selectors give the planes (the library's one plane rule); a "volume" is detected/reformatted
        given = {plane: str(p) for plane, p in c.inputs.items() if plane != "volume"}
        detected = [str(c.inputs["volume"])] if "volume" in c.inputs else []
        return PredictJob(inputs=detected, planes=given, out=str(result_dir), model=model,
                          device=cli_device(device_choice), ehr=c.ehr, case_id=c.case_id)

    def predict(self, model: str, device_choice: str, on_done: Done, result_name: str = "result") -> Path:
        """Run predict into ``<out>/<result_name>``; on success the result is loaded into the scene."""
        if self.case is None:
            raise RuntimeError("prepare() the inputs first")
        result_dir = self.case.out_dir / result_name
        argv = predict_command(self.python, self.predict_job(model, device_choice, result_dir))

        def done(ok: bool) -> None:
            if ok:
                self.case.results.append(result_dir)
                self.nodes = self.load_result(result_dir)
            on_done(ok)

        self._run(argv, device_choice, done)
        return result_dir

    def load_result(self, result_dir: Path):
        from ..mrml.case import load_case

        return load_case(self.scene, result_dir, self.case.reference, self.segmentations_logic)

    def save_correction(self, finding_edits: dict, store=None):
        """Store the (edited) segmentation of the loaded result + confirmed/flipped findings."""
        from ..mrml.corrections import save_correction

        if self.nodes is None:
            raise RuntimeError("no result is loaded")
        entry, report = save_correction(self.scene, self.nodes.segmentation, self.case.reference, finding_edits,
                                        store=store, case_id=self.case.case_id)
        self.log(f"correction saved: {entry.directory}" + (f" (skipped segments: {', '.join(report.skipped)})"
                                                             if report.skipped else ""))
        return entry

    def finetune(self, model: str, device_choice: str, on_done: Done, corrections_dir: str | None = None) -> None:
        """New head version from the saved corrections; then the heads run again on the loaded case."""
        job = FinetuneJob(model=model, corrections=corrections_dir, device=cli_device(device_choice))
        self._run(finetune_command(self.python, job), device_choice,
                  lambda ok: self._repredict(model, device_choice, on_done) if ok else on_done(False))

    def rollback(self, model: str, version: str, device_choice: str, on_done: Done) -> None:
        self._run(rollback_command(self.python, model, version), device_choice,
                  lambda ok: self._repredict(model, device_choice, on_done) if ok else on_done(False))

    def _repredict(self, model: str, device_choice: str, on_done: Done) -> None:
        """Predict the loaded case again with the current head set (features come from the cache,
        so only the heads run); each head version gets its own ``result-<version>`` folder."""
        if self.case is None:
            return on_done(True)
        version = self.current_head_version(model) or "current"
        self.predict(model, device_choice, on_done, result_name=f"result-{version}")

    # ---- head versions (plain JSON reads, no torch)
    def head_versions(self, model: str) -> list:
        from ..models.versions import head_versions

        return head_versions(model)["versions"]

    def current_head_version(self, model: str) -> str | None:
        from ..models.versions import head_versions

        return head_versions(model)["current"]

    def finetune_summary(self, model: str) -> str:
        from ..models.versions import finetune_summary_lines, latest_finetune

        record = latest_finetune(model)
        return "\n".join(finetune_summary_lines(record)) if record else f"No fine-tuned head set is current. " \
                                                                         f"{DISCLAIMER}"
