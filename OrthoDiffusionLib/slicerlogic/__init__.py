"""Slicer-facing logic without Qt: what the OrthoDiffusion module does, minus the widgets.

Commands come from the library's job objects (``PredictJob.to_argv()``), the EHR record from the
library's field list, the model list from the catalogue, and the child process through an injected
runner (:class:`process.ProcessRunner`), so all of it runs on the ``slicer-core`` wheel in tests.
Never imports qt, ctk or ScriptedLoadableModule. Research use, not for clinical decisions.
"""
