"""AstroMAE modules re-created for the parity fixtures.

The package and class names match the original's pickled class paths
(`blocks.photoz.*`, `blocks.model_vit_inception.ViT_Astro`), so a whole-module checkpoint
saved from these classes has the same structure as the original's. Written from the
description in shared/REFERENCE.md, not copied from the original code.
"""
