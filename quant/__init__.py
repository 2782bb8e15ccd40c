"""Masks, scalar and vector quantizers, entropy models and coders."""
