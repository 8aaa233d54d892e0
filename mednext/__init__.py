"""MedNeXt experiment suite: MedNeXt, MedNeXt-Lite and CMUNeXt on public medical imaging data."""

__version__ = "0.1.0"
