"""Running a model: ``predict`` (one study → result folder, one function per stage), ``cohort``
(a manifest, resumable, workers or torchrun ranks), ``rank`` (uncertainty for annotation) and the
resource ``guard`` checked before any pixel is read. Research use only, not for clinical decisions."""
