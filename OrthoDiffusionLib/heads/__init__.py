"""Heads on cached backbone features: SAP pooling, per-plane experts, MPAE gate, feature-level
fusion, EHR late fusion, segmentation decoder + partial-label loss, versioned head store, fitting.

Plane order everywhere: sagittal, coronal, axial (``PLANES``). Importing this package registers
every head class so a stored head set can be rebuilt from its manifest.
"""

from .diagnosis import (ConcatFusionHead, CrossAttentionFusionHead, DiagnosisOutput, MPAEGate, MPAEHead,
                        PlaneExpert, ProjectionFusionHead)
from .ehr import EHRFusionHead, encode_ehr, fit_ehr_spec
from .planes import PLANES, plane_presence
from .pooling import SAPPooling
from .registry import HEAD_TYPES, build_head, register_head
from .segmentation import PartialLabelSegLoss, SegmentationDecoder, fuse_plane_probabilities, upsampling_plan
from .store import HeadStore, load_head_set, save_head_set
from .stratify import (aggregate_by_patient, iterative_stratification, label_fraction_subset, stratified_kfold,
                       stratified_split)

__all__ = [
    "PLANES", "plane_presence", "SAPPooling", "PlaneExpert", "MPAEGate", "MPAEHead", "DiagnosisOutput",
    "ConcatFusionHead", "ProjectionFusionHead", "CrossAttentionFusionHead", "EHRFusionHead", "encode_ehr",
    "fit_ehr_spec", "SegmentationDecoder", "PartialLabelSegLoss", "fuse_plane_probabilities", "upsampling_plan",
    "HeadStore", "save_head_set", "load_head_set", "HEAD_TYPES", "build_head", "register_head",
    "iterative_stratification", "stratified_kfold", "stratified_split", "label_fraction_subset",
    "aggregate_by_patient",
]
