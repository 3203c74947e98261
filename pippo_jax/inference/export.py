"""Serving artifacts of a trained checkpoint that need none of this package's training code.

`export_generator` writes a folder:

  sampler.jax_export   the whole view sampler (conditions -> DDIM loop -> decoded views) as
                       serialized StableHLO (`jax.export`), a function of
                       (weights, inputs, key data) -> uint8 views [b, V, H, W, 3]
  params.safetensors   the weights it takes, flattened with "/"-joined keys: "model/<param path>"
                       and "codec/<leaf path>" (the SDXL VAE's parameters; a space-to-depth codec
                       has none)
  metadata.json        the saved training config, the input and output spec, the sampler
                       settings baked into the function, versions
  saved_model/         optional: one denoiser step (the model's forward on latents) as a
                       TensorFlow SavedModel, written through orbax-export

`pippo_jax.inference.exported.load_exported` runs the sampler with jax, numpy and safetensors
alone. The batch dimension is symbolic ("b") where the traced sampler allows it; otherwise the
function is exported for a fixed batch, and metadata.json says so and why.

The folder is written next to its destination under a temporary name and renamed into place at
the end, so a failure leaves nothing half-written.
"""

import importlib.metadata
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import save_file

from pippo_jax import checkpoints
from pippo_jax.diffusion import guidance
from pippo_jax.models.pippo import dummy_inputs

FORMAT = "pippo-export"
FORMAT_VERSION = 1
SAMPLER_FILE = "sampler.jax_export"
WEIGHTS_FILE = "params.safetensors"
METADATA_FILE = "metadata.json"
SAVED_MODEL_DIR = "saved_model"
BATCH_DIM = "b"
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export lowers for
# Batch keys of which the sampler reads the number of target views.
PER_VIEW_KEYS = ("target_cam_pose", "target_plucker", "target_anchor")
POSE = "the 4x4 world-to-camera extrinsics E flattened row-major (geometry.cameras.camera_pose_16)"
PLUCKER = "Plücker ray map, per pixel (direction, origin x direction) (geometry.plucker)"
ANCHOR = "Spatial Anchor image: the head point and axes drawn on black, RGB 0..255"


def input_spec(cfg, num_views: int, batch: int | str = BATCH_DIM) -> list[dict]:
  """The sampler's inputs for model config `cfg`: name, shape, dtype and meaning of each.

  Cameras and their maps live in the normalised, head-centred scene of the training data
  (`data_pipelines.schemas`, `data.normalize_scene`).
  """
  h = cfg.image_size
  spec = [("ref_image", (h, h, 3), "uint8", "the reference photo of the person, RGB 0..255")]
  if cfg.use_cam_mlp:
    spec += [
      ("ref_cam_pose", (16,), "float32", f"the reference camera: {POSE}"),
      ("target_cam_pose", (num_views, 16), "float32", f"the target cameras, one per view: {POSE}"),
    ]
  if cfg.use_control_mlp:
    spec += [
      ("ref_plucker", (h, h, 6), "float32", f"the reference camera's {PLUCKER}"),
      ("target_plucker", (num_views, h, h, 6), "float32", f"each target camera's {PLUCKER}"),
      ("ref_anchor", (h, h, 3), "uint8", f"the reference camera's {ANCHOR}"),
      ("target_anchor", (num_views, h, h, 3), "uint8", f"each target camera's {ANCHOR}"),
    ]
  return [
    dict(name=name, shape=[batch, *shape], dtype=dtype, description=text)
    for name, shape, dtype, text in spec
  ]


def output_spec(cfg, num_views: int, batch: int | str = BATCH_DIM) -> list[dict]:
  h = cfg.image_size
  return [
    dict(
      name="views",
      shape=[batch, num_views, h, h, 3],
      dtype="uint8",
      description="the generated target views, RGB 0..255, in the order of the target cameras",
    )
  ]


def step_spec(cfg, num_views: int, batch: int | str, with_drops: bool) -> list[dict]:
  """Inputs of the SavedModel's denoiser step (latents: the codec has been applied)."""
  x_t, _, cond = dummy_inputs(cfg, 1, num_views)
  text = {
    "x_t": "noisy target latents at timestep t",
    "t": "diffusion timestep of each example, in [0, diffusion.num_timesteps)",
    "ref_latent": "the codec's latents of the reference image",
    "cam_pose": f"the target cameras: {POSE}",
    "ref_cam_pose": f"the reference camera: {POSE}",
    "anchor_latent": "the codec's latents of the target Spatial Anchor images",
    "ref_anchor_latent": "the codec's latents of the reference Spatial Anchor image",
    "plucker": f"each target camera's {PLUCKER}",
    "ref_plucker": f"the reference camera's {PLUCKER}",
  }
  arrays = {"x_t": x_t, "t": np.zeros((1,), np.int32), **cond}
  spec = [
    dict(
      name=k, shape=[batch, *a.shape[1:]], dtype=str(np.dtype(a.dtype)), description=text.get(k, k)
    )
    for k, a in arrays.items()
  ]
  if with_drops:
    spec += [
      dict(
        name=f"drop_{g}",
        shape=[batch],
        dtype="bool",
        description=f"True: replace the {g} condition by its learnt null embedding "
        "(classifier-free guidance's unconditional passes)",
      )
      for g in guidance.model_groups(cfg)
    ]
  return spec


def _key_name(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def flatten_weights(prefix: str, tree) -> tuple[dict[str, Any], Any, list[str]]:
  """({prefix/a/b: leaf}, treedef, keys in leaf order) of a pytree (parameters, a codec)."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  keys = ["/".join([prefix, *map(_key_name, path)]) for path, _ in leaves]
  if len(set(keys)) != len(keys):
    raise ValueError(f"the {prefix} tree has leaves whose '/'-joined paths collide")
  return dict(zip(keys, (leaf for _, leaf in leaves))), treedef, keys


def _spec(shape, dtype, b) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(b if d == BATCH_DIM else d for d in shape), np.dtype(dtype))


def _first_line(error: BaseException) -> str:
  text = str(error).strip()
  return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _export(fn, arg_specs, symbolic: bool, batch: int, platforms):
  """(jax.export.Exported, batch record): symbolic "b" first unless told, else a fixed batch."""
  reason = "asked for a fixed batch"
  if symbolic:
    (b,) = jax.export.symbolic_shape(BATCH_DIM)
    try:
      exported = jax.export.export(jax.jit(fn), platforms=platforms)(*arg_specs(b))
      return exported, dict(symbolic=True, dim=BATCH_DIM)
    except Exception as e:  # noqa: BLE001 - any tracing failure falls back to a fixed batch
      reason = f"the batch could not be symbolic ({_first_line(e)})"
  exported = jax.export.export(jax.jit(fn), platforms=platforms)(*arg_specs(batch))
  return exported, dict(symbolic=False, size=batch, reason=reason)


def _versions(saved_model: bool) -> dict:
  names = ["jax", "jaxlib", "pippo_jax", "safetensors", "numpy"]
  if saved_model:
    names += ["tensorflow-cpu", "tensorflow", "orbax-export"]
  out = {"python": platform.python_version()}
  for name in names:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return out


def export_sampler(gen, num_views: int, settings: dict, *, symbolic_batch, batch, platforms):
  """(Exported, batch record, weights {key: array}) of the whole view sampler."""
  model_w, model_def, model_keys = flatten_weights("model", gen.params)
  codec_w, codec_def, codec_keys = flatten_weights("codec", gen.codec)
  sampler = gen.sampler(**settings)
  impl = str(jax.random.key_impl(jax.random.key(0)))
  key_shape = jax.random.key_data(jax.random.key(0)).shape
  cfg, spec = gen.cfg, input_spec(gen.cfg, num_views)
  h = cfg.image_size

  def serving_fn(weights, inputs, key_data):
    params = jax.tree_util.tree_unflatten(model_def, [weights[k] for k in model_keys])
    codec = jax.tree_util.tree_unflatten(codec_def, [weights[k] for k in codec_keys])
    batch_dict = dict(inputs)
    if not any(k in batch_dict for k in PER_VIEW_KEYS):  # only the view count is read from it
      b = batch_dict["ref_image"].shape[0]
      batch_dict["target_images"] = jnp.zeros((b, num_views, h, h, 3), jnp.uint8)
    return sampler(params, codec, batch_dict, jax.random.wrap_key_data(key_data, impl=impl))

  weights = {**model_w, **codec_w}

  def arg_specs(b):
    return (
      {k: jax.ShapeDtypeStruct(np.shape(v), v.dtype) for k, v in weights.items()},
      {s["name"]: _spec(s["shape"], s["dtype"], b) for s in spec},
      jax.ShapeDtypeStruct(key_shape, np.uint32),
    )

  exported, batch_record = _export(serving_fn, arg_specs, symbolic_batch, batch, platforms)
  seed = dict(
    key_impl=impl,
    key_data_shape=list(key_shape),
    key_data_dtype="uint32",
    rule="run(inputs, seed) passes jax.random.key_data(jax.random.key(seed, impl=key_impl))",
  )
  return exported, batch_record, weights, seed


def export_denoiser(
  gen, path: str, num_views: int, *, attention_biasing, symbolic_batch, batch, platforms
) -> dict:
  """Writes one denoiser step of `gen` as a TensorFlow SavedModel at `path` (orbax-export);
  returns its metadata. Signatures: "serving_default" (all conditions kept) and "with_drops"
  (also drop_<group> flags, for classifier-free guidance)."""
  try:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from orbax import export as oex  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
      f"the SavedModel needs TensorFlow and orbax-export ({e}): pip install tensorflow-cpu "
      "orbax-export, or leave it out (saved_model=False, pippo-export --no-saved-model)"
    ) from e

  model, cfg, groups = gen.model, gen.cfg, gen.condition_groups

  def split(inputs):
    inputs = dict(inputs)
    return inputs.pop("x_t"), inputs.pop("t"), inputs

  def denoise(params, inputs):
    x_t, t, cond = split(inputs)
    return model.apply({"params": params}, x_t, t, cond, attention_biasing=attention_biasing)

  def denoise_with_drops(params, inputs):
    x_t, t, cond = split(inputs)
    drop = {g: cond.pop(f"drop_{g}") for g in groups}
    return model.apply({"params": params}, x_t, t, cond, drop, attention_biasing=attention_biasing)

  fns = {"denoise": denoise, "denoise_with_drops": denoise_with_drops}
  signature_of = {"denoise": "serving_default", "denoise_with_drops": "with_drops"}

  def save(b):
    specs = {k: step_spec(cfg, num_views, b, k == "denoise_with_drops") for k in fns}
    poly = None
    if b == BATCH_DIM:  # every input has the batch first
      poly = {k: {s["name"]: f"({BATCH_DIM}, ...)" for s in spec} for k, spec in specs.items()}
    module = oex.JaxModule(
      gen.params,
      fns,
      trainable=False,
      input_polymorphic_shape=poly,
      jax2tf_kwargs={k: dict(native_serialization_platforms=tuple(platforms)) for k in fns},
    )
    configs = [
      oex.ServingConfig(
        signature_of[k],
        input_signature=[
          {
            s["name"]: tf.TensorSpec(
              [None if d == BATCH_DIM else d for d in s["shape"]], s["dtype"], name=s["name"]
            )
            for s in spec
          }
        ],
        tf_postprocessor=lambda out: {"model_output": out},
        method_key=k,
      )
      for k, spec in specs.items()
    ]
    oex.ExportManager(module, configs).save(path)
    return specs

  reason = "asked for a fixed batch"
  specs = None
  if symbolic_batch:
    try:
      specs, record = save(BATCH_DIM), dict(symbolic=True, dim=BATCH_DIM)
    except Exception as e:  # noqa: BLE001 - any conversion failure falls back to a fixed batch
      reason = f"the batch could not be symbolic ({_first_line(e)})"
      shutil.rmtree(path, ignore_errors=True)
  if specs is None:
    specs, record = save(batch), dict(symbolic=False, size=batch, reason=reason)
  b = BATCH_DIM if record["symbolic"] else batch
  h = cfg.latent_size
  out = dict(
    name="model_output",
    shape=[b, num_views, h, h, cfg.latent_channels],
    dtype="float32",
    description=f"the model's prediction ({gen.config.diffusion.prediction}) for x_t",
  )
  return dict(
    path=os.path.basename(path),
    what="one denoiser step: the model's forward on latents (encode images with the codec "
    "first; the DDIM loop and the decoder are not in it)",
    prediction=gen.config.diffusion.prediction,
    attention_biasing=attention_biasing,
    batch=record,
    platforms=list(platforms),
    signatures={
      signature_of[k]: dict(inputs=spec, outputs=[out], method=k) for k, spec in specs.items()
    },
  )


def _write_atomically(out_dir: str, write) -> None:
  """`write(tmp)` into a temporary sibling of `out_dir`, then rename it to `out_dir`."""
  out_dir = os.path.abspath(out_dir)
  if os.path.lexists(out_dir) and not (os.path.isdir(out_dir) and not os.listdir(out_dir)):
    raise FileExistsError(f"{out_dir} exists; remove it or choose another output folder")
  parent = os.path.dirname(out_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.partial-", dir=parent)
  try:
    write(tmp)
    os.chmod(tmp, 0o755)
    if os.path.isdir(out_dir):
      os.rmdir(out_dir)  # an empty folder the user made for it
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def export_generator(
  gen,
  out_dir: str,
  *,
  num_views: int,
  batch: int = 1,
  num_steps: int | None = None,
  scales: dict[str, float] | None = None,
  eta: float | None = None,
  rescale: float | None = None,
  triangular: bool | None = None,
  attention_biasing: bool | None = None,
  symbolic_batch: bool = True,
  saved_model: bool = True,
  platforms: Sequence[str] | None = None,
  source: dict | None = None,
) -> dict:
  """Writes the serving folder `out_dir` for a `Generator` (see the module docstring).

  Args:
    gen: a `pippo_jax.inference.generator.Generator` (`load_generator(checkpoint)`).
    out_dir: the folder to create; it must not exist, or be empty.
    num_views: target views per example, baked into the function.
    batch: the batch size exported when the batch cannot be symbolic (or with
      `symbolic_batch=False`).
    num_steps, eta: DDIM settings (None: the checkpoint config's `diffusion.sampler`).
    scales: classifier-free guidance {group: scale} (None: the config's scales that are not 1.0).
    rescale, triangular, attention_biasing: as `Generator.sampler` (None: the config's
      `diffusion.guidance` / `diffusion.sampler` values).
    symbolic_batch: try a symbolic batch dimension "b" first.
    saved_model: also write OUT/saved_model, one denoiser step as a TensorFlow SavedModel.
    platforms: platforms to lower for, e.g. ("cpu", "cuda") (None: this machine's backend). The
      attention implementation is the one chosen for this machine's backend.
    source: extra facts for metadata.json (checkpoint path, EMA, ...).

  Returns:
    The metadata written to metadata.json.
  """
  if batch < 1:
    raise ValueError(f"batch={batch} must be >= 1")
  platforms = tuple(platforms or (jax.default_backend(),))
  unknown = [p for p in platforms if p not in PLATFORMS]
  if unknown:
    raise ValueError(f"unknown platforms {unknown}: choose from {', '.join(PLATFORMS)}")
  if num_views < 1:
    raise ValueError(f"num_views={num_views} must be >= 1")
  settings = gen.settings(
    num_steps=num_steps,
    eta=eta,
    scales=scales,
    rescale=rescale,
    triangular=triangular,
    attention_biasing=attention_biasing,
  )
  exported, batch_record, weights, seed = export_sampler(
    gen, num_views, settings, symbolic_batch=symbolic_batch, batch=batch, platforms=platforms
  )
  b = BATCH_DIM if batch_record["symbolic"] else batch
  d = gen.config.diffusion
  metadata = dict(
    format=FORMAT,
    format_version=FORMAT_VERSION,
    files=dict(
      sampler=SAMPLER_FILE,
      weights=WEIGHTS_FILE,
      saved_model=SAVED_MODEL_DIR if saved_model else None,
    ),
    inputs=input_spec(gen.cfg, num_views, b),
    outputs=output_spec(gen.cfg, num_views, b),
    batch=batch_record,
    platforms=list(exported.platforms),
    seed=seed,
    sampler=dict(
      num_views=num_views,
      image_size=gen.cfg.image_size,
      num_steps=settings["num_steps"],
      eta=settings["eta"],
      guidance=settings["scales"],
      rescale=settings["rescale"],
      triangular=settings["triangular"],
      attention_biasing=settings["attention_biasing"],
      prediction=d.prediction,
      num_timesteps=d.num_timesteps,
      codec=gen.config.codec.kind,
    ),
    weights=dict(
      tensors=len(weights),
      model_parameters=int(sum(np.size(v) for k, v in weights.items() if k.startswith("model/"))),
      codec_parameters=int(sum(np.size(v) for k, v in weights.items() if k.startswith("codec/"))),
    ),
    source=dict(source or {}, step=gen.step) if gen.step is not None else dict(source or {}),
    versions=_versions(saved_model),
    config=checkpoints.config_dict(gen.config),
  )

  def write(tmp):
    with open(os.path.join(tmp, SAMPLER_FILE), "wb") as f:
      f.write(exported.serialize())
    save_file(
      {k: np.ascontiguousarray(np.asarray(v)) for k, v in weights.items()},
      os.path.join(tmp, WEIGHTS_FILE),
      metadata={"format": FORMAT, "layout": "model/<param path>, codec/<leaf path>"},
    )
    if saved_model:
      metadata["saved_model"] = export_denoiser(
        gen,
        os.path.join(tmp, SAVED_MODEL_DIR),
        num_views,
        attention_biasing=settings["attention_biasing"],
        symbolic_batch=symbolic_batch,
        batch=batch,
        platforms=platforms,
      )
    with open(os.path.join(tmp, METADATA_FILE), "w") as f:
      json.dump(metadata, f, indent=2, ensure_ascii=False)
      f.write("\n")
    for name in (SAMPLER_FILE, WEIGHTS_FILE, METADATA_FILE):
      os.chmod(os.path.join(tmp, name), 0o644)

  _write_atomically(out_dir, write)
  return metadata
