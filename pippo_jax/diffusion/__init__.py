"""Diffusion: cosine DDPM schedule, training objective, DDIM sampler, guidance."""
