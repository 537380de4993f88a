"""OrthoDiffusion: diffusion-model foundation backbones for musculoskeletal MRI.

Pure-Python library behind the ``orthodiffusion`` CLI and the 3D Slicer module. It never imports
Qt, ctk or ScriptedLoadableModule; only ``OrthoDiffusionLib.mrml`` imports the ``slicer`` MRML classes.
"""

__version__ = "0.1.0"

DISCLAIMER = "Research use only, not for clinical decisions."
