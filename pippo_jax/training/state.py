"""Train state, optimizer and sharded initialisation.

Parameters and Adam moments are created directly with their target shardings: shapes come from
`jax.eval_shape`, shardings from the logical-axis rules, and `jax.jit(init, out_shardings=...)`
makes every device build only its own shards. Optimizer-state shardings follow the parameters
through `optax.tree_map_params` (a plain `jax.jit(tx.init)` would replicate the moments).
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from pippo_jax.errors import ConfigError
from pippo_jax.models import params as params_lib
from pippo_jax.models.config import ModelConfig
from pippo_jax.models.pippo import Pippo, dummy_inputs
from pippo_jax.parallel import sharding


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any
  rng: jax.Array  # raw uint32 key data (checkpoint friendly)
  ema_params: Any  # None when EMA is off
  nonfinite: jax.Array  # consecutive skipped (non-finite) steps


def learning_rate(opt_cfg) -> optax.Schedule:
  """Constant, or linear warm-up then constant / cosine / linear decay to `decay_steps`."""
  warmup, lr = int(opt_cfg.warmup_steps), float(opt_cfg.lr)
  if opt_cfg.decay == "constant":
    after = optax.constant_schedule(lr)
  elif opt_cfg.decay == "cosine":
    after = optax.cosine_decay_schedule(lr, max(1, int(opt_cfg.decay_steps) - warmup))
  elif opt_cfg.decay == "linear":
    after = optax.linear_schedule(lr, 0.0, max(1, int(opt_cfg.decay_steps) - warmup))
  else:
    raise ConfigError(f"optimizer.decay={opt_cfg.decay!r}: use constant, cosine or linear")
  if warmup <= 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def make_optimizer(opt_cfg, param_shapes) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW per top-level module (learning-rate multipliers from
  `optimizer.lr_multipliers`, modules in `optimizer.frozen` not updated), with optional gradient
  accumulation over `optimizer.grad_accum_steps` micro-batches."""
  if opt_cfg.name != "adamw":
    raise ConfigError(f"optimizer.name={opt_cfg.name!r}: only 'adamw' is implemented")
  modules = set(param_shapes)
  multipliers = dict(opt_cfg.lr_multipliers)
  frozen = set(opt_cfg.frozen)
  unknown = (set(multipliers) | frozen) - modules
  if unknown:
    raise ConfigError(
      f"optimizer.lr_multipliers / optimizer.frozen name unknown modules "
      f"{sorted(unknown)}; the model has {sorted(modules)}"
    )
  schedule = learning_rate(opt_cfg)

  def adamw(mult):
    lr = schedule if mult == 1.0 else (lambda step: mult * schedule(step))
    return optax.adamw(
      lr, b1=opt_cfg.b1, b2=opt_cfg.b2, eps=opt_cfg.eps, weight_decay=opt_cfg.weight_decay
    )

  labels = {m: "frozen" if m in frozen else f"x{float(multipliers.get(m, 1.0))}" for m in modules}
  transforms = {
    label: optax.set_to_zero() if label == "frozen" else adamw(float(label[1:]))
    for label in set(labels.values())
  }
  tx = optax.chain(
    optax.clip_by_global_norm(opt_cfg.grad_clip), optax.multi_transform(transforms, labels)
  )  # labels: a prefix of the params tree
  if int(opt_cfg.grad_accum_steps) > 1:
    tx = optax.MultiSteps(tx, int(opt_cfg.grad_accum_steps))
  return tx


def _init_state(model, tx, cfg: ModelConfig, key, use_ema: bool) -> TrainState:
  x_t, t, cond = dummy_inputs(cfg, 1)
  init_key, state_key = jax.random.split(key)
  params = nn.unbox(model.init(init_key, x_t, t, cond)["params"])
  return TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    opt_state=tx.init(params),
    rng=jax.random.key_data(state_key),
    ema_params=jax.tree.map(jnp.copy, params) if use_ema else None,
    nonfinite=jnp.zeros((), jnp.int32),
  )


def state_shardings(model, tx, cfg: ModelConfig, mesh, use_ema: bool, rules=sharding.LOGICAL_RULES):
  """(abstract TrainState, its NamedShardings) from the logical-axis rules."""
  param_sh = sharding.param_shardings(params_lib.abstract(cfg, boxed=True), mesh, rules)
  abstract = jax.eval_shape(lambda k: _init_state(model, tx, cfg, k, use_ema), jax.random.key(0))
  replicated = NamedSharding(mesh, P())
  opt_sh = optax.tree_map_params(
    tx,
    lambda _, s: s,
    abstract.opt_state,
    param_sh,
    transform_non_params=lambda _: replicated,
    is_leaf=lambda x: isinstance(x, NamedSharding),
  )
  shardings = TrainState(
    step=replicated,
    params=param_sh,
    opt_state=opt_sh,
    rng=replicated,
    ema_params=param_sh if use_ema else None,
    nonfinite=replicated,
  )
  return abstract, shardings


def init_train_state(
  model: Pippo, tx, cfg: ModelConfig, mesh, seed: int, use_ema: bool, rules=sharding.LOGICAL_RULES
):
  """A freshly initialised TrainState, built directly in its shardings."""
  _, shardings = state_shardings(model, tx, cfg, mesh, use_ema, rules)
  init = jax.jit(lambda k: _init_state(model, tx, cfg, k, use_ema), out_shardings=shardings)
  return init(jax.random.key(seed)), shardings
