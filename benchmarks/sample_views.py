"""Seconds and memory to sample N views from one photo, for N = 4, 12, 24, 48.

  python benchmarks/sample_views.py [--sizes smoke,tiny] [--views 4,12,24,48] [--steps 5]

Times the production path of `pippo-sample`: `inference.generator.Generator.sampler` (reference
and cameras -> guided DDIM over all views jointly -> decoded uint8 views) on a turntable batch
built by `inference.scene`, with random weights. Per row: compile seconds, seconds per denoiser
call (one DDIM step), seconds for the whole `--steps` run, and XLA's temporary buffer size of the
compiled sampler (its peak working memory besides parameters, inputs and outputs; CPU has no
allocator statistics), for each attention implementation in `--attention`. The tiny size's SDXL
VAE needs weights, so it runs with a stand-in codec of the same latent shape (8x average pooling
and nearest upsampling; the VAE is not timed); the smoke size uses its own space-to-depth codec.
"""

import argparse
import importlib
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np

from pippo_jax.inference import generator, scene

SIZES = {"smoke": "size=smoke", "tiny": "size=tiny,res=128"}


@flax.struct.dataclass
class PoolCodec:
  """Latents of the VAE's shape without a VAE: f x f average pooling to `channels` channels."""

  downsample: int = flax.struct.field(pytree_node=False, default=8)
  channels: int = flax.struct.field(pytree_node=False, default=4)

  def encode(self, images, key=None):
    del key
    *lead, h, w, _ = images.shape
    f = self.downsample
    x = images.astype(jnp.float32).reshape(*lead, h // f, f, w // f, f, 3).mean((-4, -2)) / 127.5
    return jnp.concatenate([x - 1, jnp.zeros((*x.shape[:-1], self.channels - 3))], -1)

  def decode(self, latents):
    f = self.downsample
    x = jnp.repeat(jnp.repeat(latents[..., :3], f, -3), f, -2)
    return jnp.clip(x, -1, 1)


def make_generator(size: str, attention: str) -> generator.Generator:
  config = importlib.import_module("pippo_jax.configs.p3_posttrain").get_config(SIZES[size])
  config.model.attention_impl = attention
  codec = None
  if config.codec.kind == "sdxl_vae":
    codec = PoolCodec(config.codec.downsample, config.codec.latent_channels)
  return generator.build_generator(config, codec=codec)


def turntable_batch(gen: generator.Generator, views: int) -> dict:
  res = gen.image_size
  box = np.array([res * 0.3, res / 12, res * 0.4, res / 1.2])
  mask = np.zeros((res, res), np.uint8)
  mask[int(box[1]) : int(box[1] + box[3]), int(box[0]) : int(box[0] + box[2])] = 255
  distance = float(gen.config.data.scene_distance)
  cam = scene.photo_camera(box, res, mask, distance=distance)
  sc = scene.photo_scene(*cam, res, num_views=views, distance=distance)
  image = np.random.default_rng(0).integers(0, 255, (res, res, 3), dtype=np.uint8)
  return scene.scene_batch(image, sc, gen.config.data, controls=gen.cfg.use_control_mlp)


def measure(gen: generator.Generator, views: int, steps: int) -> dict:
  batch = jax.device_put(turntable_batch(gen, views))
  biasing = views + 1 > gen.cfg.attention_train_views
  sampler = gen.sampler(num_steps=steps, attention_biasing=biasing)
  key = jax.random.key(0)
  start = time.perf_counter()
  compiled = sampler.lower(gen.params, gen.codec, batch, key).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(compiled(gen.params, gen.codec, batch, key))
  seconds = time.perf_counter() - start
  mem = compiled.memory_analysis()
  calls = gen.model_calls(steps)
  return dict(
    compile_s=compile_s,
    seconds=seconds,
    per_call=seconds / calls,
    temp_mib=getattr(mem, "temp_size_in_bytes", float("nan")) / 2**20,
    calls=calls,
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="smoke,tiny")
  parser.add_argument("--views", default="4,12,24,48")
  parser.add_argument("--steps", type=int, default=5, help="DDIM steps (pippo-sample uses 30)")
  parser.add_argument("--attention", default="blockwise,xla")
  args = parser.parse_args()
  print(
    "| size | attention | views | tokens | compile s | s / DDIM step | s / run | temp MiB | "
    "temp MiB / view |",
    "|---|---|---|---|---|---|---|---|---|",
    sep="\n",
    flush=True,
  )
  for size in args.sizes.split(","):
    for attention in args.attention.split(","):
      gen = make_generator(size, attention)
      for views in [int(v) for v in args.views.split(",")]:
        r = measure(gen, views, args.steps)
        tokens = (views + 1) * gen.cfg.tokens_per_view
        print(
          f"| {size} @{gen.image_size} | {attention} | {views} | {tokens} | "
          f"{r['compile_s']:.1f} | {r['per_call']:.3f} | {r['seconds']:.1f} ({r['calls']} "
          f"steps) | {r['temp_mib']:.1f} | {r['temp_mib'] / views:.2f} |",
          flush=True,
        )


if __name__ == "__main__":
  main()
