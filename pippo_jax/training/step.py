"""The pure training step: (state, global batch) -> (state, metrics), compiled with shardings.

A batch is the data pipeline's NumPy dict, turned into model inputs by `models.inputs`. Inside
the step images go through the codec (with `data.latents`, their stored moments are sampled), one
timestep per sample is drawn and shared by its views, condition groups are dropped for
classifier-free guidance, and the plain MSE between the model output and its target (epsilon, v or
x0) is minimised. A step whose loss or gradient norm is not finite leaves the state untouched and
counts itself in `state.nonfinite` (reset by the next good step).
"""

import jax
import jax.numpy as jnp
import optax

from pippo_jax.diffusion import guidance, objective
from pippo_jax.models import inputs
from pippo_jax.models.config import ModelConfig
from pippo_jax.parallel import sharding as shard_lib
from pippo_jax.training.state import TrainState


def example_keys(key: jax.Array, batch: dict) -> jax.Array:
  """One key per example, from (epoch, record index) when the batch carries them: the noise,
  timestep and condition drops then follow the example, not its row, so a global batch assembled
  in another order (other process counts) trains identically up to summation order."""
  b = inputs.batch_size(batch)
  if "record_index" not in batch:
    return jax.random.split(key, b)
  fold = lambda e, r: jax.random.fold_in(jax.random.fold_in(key, e), r)
  return jax.vmap(fold)(batch["epoch"].astype(jnp.uint32), batch["record_index"].astype(jnp.uint32))


def loss_and_metrics(params, model, codec, cfg: ModelConfig, schedule, diffusion_cfg, batch, key):
  k_codec, k_rows = jax.random.split(key)
  x0, cond = inputs.model_inputs(batch, codec, cfg, k_codec)
  rows = jax.vmap(lambda k: jax.random.split(k))(example_keys(k_rows, batch))

  def per_example(k_noise, k_drop, x):
    noised = objective.noise_batch(k_noise, schedule, x[None], diffusion_cfg.prediction)
    drop = guidance.sample_condition_drops(k_drop, 1, dict(diffusion_cfg.cond_drop))
    return jax.tree.map(lambda a: a[0], (noised, drop))

  noised, drop = jax.vmap(per_example)(rows[:, 0], rows[:, 1], x0)
  pred = model.apply({"params": params}, noised.x_t, noised.t, cond, drop)
  mask = None
  if diffusion_cfg.loss_mask == "person":  # latent cells with any person pixel
    mask = jnp.broadcast_to(
      inputs.latent_mask(batch[inputs.MASK_KEY], codec.downsample), pred.shape
    )
  loss = objective.diffusion_loss(pred, noised.target, mask)
  return loss, {"loss": loss}


def train_step(
  state: TrainState,
  batch: dict,
  *,
  model,
  tx,
  codec,
  cfg: ModelConfig,
  schedule,
  diffusion_cfg,
  ema_decay: float = 0.0,
):
  key, step_key = jax.random.split(jax.random.wrap_key_data(state.rng))
  (loss, metrics), grads = jax.value_and_grad(loss_and_metrics, has_aux=True)(
    state.params, model, codec, cfg, schedule, diffusion_cfg, batch, step_key
  )
  grad_norm = optax.tree.norm(grads)
  # The optimizer's hyperparameters are finite (`config_lib.validate`), so a finite loss and
  # gradient make a finite update. A non-finite step leaves the state as it was: `lax.cond`
  # rather than a `where` over every parameter and moment, so that a good step costs one fused
  # pass over the state and nothing more.
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def update(_):
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
      ema = jax.tree.map(lambda e, p: ema_decay * e + (1 - ema_decay) * p, ema, params)
    return params, opt_state, ema

  params, opt_state, ema = jax.lax.cond(
    finite, update, lambda _: (state.params, state.opt_state, state.ema_params), None
  )
  new_state = TrainState(
    step=state.step + 1,
    params=params,
    opt_state=opt_state,
    rng=jax.random.key_data(key),
    ema_params=ema,
    nonfinite=jnp.where(finite, 0, state.nonfinite + 1),
  )
  metrics = dict(
    metrics, grad_norm=grad_norm, finite=finite.astype(jnp.float32), nonfinite=new_state.nonfinite
  )
  return new_state, metrics


def jit_train_step(state_shardings, mesh, rules=shard_lib.LOGICAL_RULES, **kwargs):
  """`train_step` as a jitted `(state, batch, codec)` function with state/batch shardings, the
  codec replicated and the state donated (what `compile_train_step` runs and `parallel.aot`
  compiles for pod topologies). Trace it inside `sharding.activate(mesh, rules)`."""
  replicated = shard_lib.replicated(mesh)
  return jax.jit(
    lambda s, b, c: train_step(s, b, codec=c, **kwargs),
    in_shardings=(state_shardings, shard_lib.batch_sharding(mesh, rules), replicated),
    out_shardings=(state_shardings, replicated),
    donate_argnums=(0,),
  )


def compile_train_step(state_shardings, mesh, rules=shard_lib.LOGICAL_RULES, *, codec, **kwargs):
  """`jit_train_step` as a `(state, batch)` function (with `.lower(state, batch)`). Call it
  inside `sharding.activate(mesh, rules)` (see `run_step`). The codec (the VAE's weights, a
  pytree) is an argument of the compiled function, replicated once, not constants baked into
  it."""
  jitted = jit_train_step(state_shardings, mesh, rules, **kwargs)
  codec = jax.device_put(codec, shard_lib.replicated(mesh))
  step = lambda state, batch: jitted(state, batch, codec)
  step.lower = lambda state, batch: jitted.lower(state, batch, codec)
  return step


def run_step(step_fn, mesh, state, batch, rules=shard_lib.LOGICAL_RULES):
  with shard_lib.activate(mesh, rules):
    return step_fn(state, batch)


def wait_for_each_step(mesh) -> bool:
  """Whether a loop should wait for each step before dispatching the next: on XLA:CPU, where the
  step runs on the host's own cores. There a step queued behind the running one makes both slower
  (tiny P3 @128 on 2 cores: 2.5-2.9 s a step waited for, 3.2-3.9 s with one queued, which also
  took 6.0-7.2 s of CPU time a step against 4.5-5.3; README, "One step queued costs on CPU").
  Accelerators keep one step queued to hide dispatch."""
  return mesh.devices.flat[0].platform == "cpu"
