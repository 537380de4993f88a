"""Outputs of a prediction: the result folder (``folder``: label map, .seg.nrrd, findings,
provenance), exports (DICOM SEG, pseudonymisation) and the corrections store."""
