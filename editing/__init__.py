"""Editing real photos with text-to-image diffusion models: model loading, image IO, the sampling loop,
Prompt-to-Prompt and the command-line tools."""
