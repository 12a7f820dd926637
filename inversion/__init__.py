"""Inverting a photo: DDIM inversion, null-text inversion and its fast alternatives, the Inversion record."""
