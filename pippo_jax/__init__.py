"""pippo_jax: multi-view human generation (Pippo) in JAX."""

from pippo_jax import hostmem

# Before JAX starts its threads: with glibc, XLA:CPU's per-step buffers are otherwise faulted in
# afresh on every step (see hostmem; PIPPO_KEEP_HOST_MEMORY=0 turns it off).
hostmem.keep_freed_memory()
