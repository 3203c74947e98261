"""The training loop: data -> global arrays -> jitted step -> metrics, samples, checkpoints.

    train(config, workdir)

Resumes from the newest intact checkpoint in WORKDIR (train state, data-iterator state: the same
batches follow), or starts a new stage from `train.init_from`. Writes TensorBoard scalars and
sample grids (clu metric writers), `metrics.jsonl` (one line per logged step; lines past the
restored step are dropped on resume), and PNG grids under `samples/`. WORKDIR/run.lock keeps a
second run off the same workdir. SIGTERM (preemption) and SIGINT (Ctrl-C) save a checkpoint at a
step every process agrees on and stop; SIGTERM returns normally, SIGINT raises KeyboardInterrupt
after the save (a second Ctrl-C stops at once).

Multi-host rule: every process runs every collective (gathers, syncs, jitted functions of global
arrays) in the same order; only writing files is gated on process 0.
"""

import json
import logging
import os
import signal
import time

import flax
import jax
import numpy as np
from clu import metrics as clu_metrics
from jax.experimental import multihost_utils

from pippo_jax import checkpoints, config_lib, paths
from pippo_jax.data_pipelines import pipelines
from pippo_jax.diffusion import schedule as schedule_lib
from pippo_jax.errors import ConfigError
from pippo_jax.inference import sample as sample_lib
from pippo_jax.models import codec as codec_lib
from pippo_jax.models import flops, inputs
from pippo_jax.models import params as params_lib
from pippo_jax.models.config import ModelConfig
from pippo_jax.models.pippo import Pippo
from pippo_jax.parallel import sharding
from pippo_jax.training import run_lock, transitions
from pippo_jax.training import state as state_lib
from pippo_jax.training import step as step_lib


def ensure_dataset(config, workdir: str) -> None:
  """With no dataset path and `train.synth.subjects` > 0 (the smoke size), build the synthetic
  studio in WORKDIR/cache and train on it."""
  if config.data.source != "array_record" or config.data.path:
    return
  if config.data.get("latents", False):
    raise ConfigError(
      "data.latents=True needs data.path: a dataset written by `pippo-data encode-latents`"
    )
  if config.train.synth.subjects <= 0:
    raise ConfigError(
      "data.path is empty: point it at a dataset directory (e.g. OUT/captures from "
      "`pippo-data synth --out OUT`), or set train.synth.subjects (the smoke "
      "size does) to train on a synthetic studio built in the workdir"
    )
  from pippo_jax.data_pipelines import synthetic_studio  # pylint: disable=g-import-not-at-top

  out = os.path.join(workdir, "cache", f"studio_{config.model.image_size}")
  kind = "captures" if config.data.kind == "multiview" else "images"
  if jax.process_index() == 0:
    s = config.train.synth
    settings = synthetic_studio.StudioSettings(
      seed=config.seed,
      subjects=s.subjects,
      cameras=s.cameras,
      moments=s.moments,
      resolution=config.model.image_size,
      images_per_subject=s.images_per_subject,
    )
    synthetic_studio.write_studio(out, settings, (kind,))  # resumable; a no-op when complete
  multihost_utils.sync_global_devices("synthetic studio ready")
  config.data.path = os.path.join(out, kind)


class MetricsLog:
  """Appends {"step", ...metrics} lines to WORKDIR/metrics.jsonl (process 0).

  Opened at `start_step` (the restored step), it first drops the lines of later steps (written by
  a run that was killed after its last checkpoint, and about to be redone) and any torn last line,
  so the file holds each step once, in order.
  """

  def __init__(self, workdir: str, start_step: int = 0):
    self.path = os.path.join(workdir, "metrics.jsonl")
    if jax.process_index() == 0 and os.path.exists(self.path):
      keep = []
      with open(self.path) as f:
        for line in f:
          try:
            if json.loads(line)["step"] <= start_step:
              keep.append(line)
          except (ValueError, KeyError, TypeError):
            pass  # a torn line from a killed run
      tmp = self.path + ".tmp"
      with open(tmp, "w") as f:
        f.writelines(keep)
      os.replace(tmp, self.path)

  def write(self, step: int, metrics: dict) -> None:
    if jax.process_index() == 0:
      with open(self.path, "a") as f:
        f.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")


def global_batch(host_batch: dict, keys, batch_sharding) -> dict:
  return {
    k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(host_batch[k]))
    for k in keys
  }


def _acquire(lock: run_lock.RunLock) -> None:
  """Process 0 takes the workdir lock; every process learns whether it got it (a collective)."""
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except run_lock.WorkdirBusyError as e:
      error = e
  if jax.process_count() > 1:
    busy = bool(multihost_utils.process_allgather(np.int32(error is not None)).max())
    if busy and error is None:
      error = run_lock.WorkdirBusyError(
        f"{os.path.dirname(lock.path)} is in use by another run (see process 0's message)"
      )
  if error is not None:
    raise error


def train(config, workdir: str) -> dict:
  """Run (or resume) training; returns the last logged metrics.

  User paths (WORKDIR, `data.path`, `train.init_from`) are made absolute here, `~` expanded;
  WORKDIR must be writable and not in use by another run.
  """
  config_lib.validate(config)
  workdir = paths.writable_dir(workdir, "--workdir")
  config.data.path = paths.resolve(config.data.path)
  config.train.init_from = paths.resolve(config.train.init_from)
  if config.train.init_from and not os.path.exists(config.train.init_from):
    raise FileNotFoundError(f"train.init_from={config.train.init_from} does not exist")
  lock = run_lock.RunLock(workdir)
  _acquire(lock)
  try:
    return _train(config, workdir)
  finally:
    lock.release()


def _train(config, workdir: str) -> dict:
  from clu import metric_writers, periodic_actions  # pylint: disable=g-import-not-at-top

  cfg = ModelConfig.from_config(config.model)
  mesh = sharding.mesh_from_config(config.sharding.mesh)
  rules = sharding.rules_from_config(config.sharding.rules)
  data_ways = mesh.shape["data"] * mesh.shape["fsdp"]
  replica_group = mesh.shape["seq"] * mesh.shape["tensor"]
  if jax.local_device_count() % replica_group:
    raise ConfigError(
      f"sharding.mesh seq x tensor = {replica_group} devices share each example, but a process "
      f"has {jax.local_device_count()} devices: those groups must lie within one process"
    )
  if config.batch_size % data_ways:
    raise ConfigError(
      f"batch_size={config.batch_size} is not divisible by the "
      f"data-parallel mesh axes data x fsdp = {data_ways}"
    )
  model = Pippo(cfg)
  tx = state_lib.make_optimizer(config.optimizer, params_lib.abstract(cfg))
  ensure_dataset(config, workdir)
  # The codec's weights (a VAE's) on every device once; the step and the sampler take them as an
  # argument.
  codec = sharding.replicate(codec_lib.make_codec(config.codec), mesh)
  schedule = schedule_lib.cosine_schedule(
    config.diffusion.num_timesteps, config.diffusion.cosine_s, config.diffusion.max_beta
  )
  use_ema = config.train.ema_decay > 0
  state, shardings = state_lib.init_train_state(model, tx, cfg, mesh, config.seed, use_ema, rules)
  abstract_state = jax.eval_shape(lambda: state)

  data_iter = pipelines.make_iterator(config.data)
  manager = checkpoints.make_manager(
    workdir, config.train.keep_checkpoints, config.train.checkpoint_every
  )
  restored, start = checkpoints.restore_latest(
    manager, abstract_state, shardings, data_iter, config
  )
  if restored is not None:
    state = restored
    if start >= int(config.train.num_steps):  # finished: no compile, no matmul benchmark
      if jax.process_index() == 0:
        print(
          f"{workdir} is already at step {start} (train.num_steps={config.train.num_steps}): "
          "nothing to do; raise --config.train.num_steps to train on"
        )
      manager.close()
      return {}
  elif config.train.init_from:
    params, rows = transitions.merge(
      state.params, checkpoints.read_params(config.train.init_from)[0]
    )
    state = state.replace(params=params)
    if jax.process_index() == 0:
      print(f"stage transition from {config.train.init_from}:\n{transitions.format_table(rows)}")

  step_fn = step_lib.compile_train_step(
    shardings,
    mesh,
    rules,
    model=model,
    tx=tx,
    codec=codec,
    cfg=cfg,
    schedule=schedule,
    diffusion_cfg=config.diffusion,
    ema_decay=float(config.train.ema_decay),
  )
  keys = inputs.batch_keys(
    cfg, config.diffusion.loss_mask, latents=config.data.get("latents", False)
  )
  batch_sh = sharding.batch_sharding(mesh, rules)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  num_steps = int(config.train.num_steps)
  hooks = [
    periodic_actions.ReportProgress(
      num_train_steps=num_steps, writer=writer, every_steps=config.train.log_every
    )
  ]
  if config.train.profile_steps and jax.process_index() == 0:
    hooks.append(
      periodic_actions.Profile(num_profile_steps=config.train.profile_steps, logdir=workdir)
    )
  log = MetricsLog(workdir, start)
  peak = config.train.peak_flops or flops.device_peak_flops(jax.devices()[0])
  if not peak:
    logging.info(
      "MFU is not logged: no known peak for %s; set train.peak_flops (FLOP/s per device) to log it",
      jax.devices()[0].device_kind,
    )
  step_flops = flops.train_step_flops(cfg, batch=config.batch_size)

  if config.train.sample_every:
    # A fixed set of examples for the sample grids, from a differently seeded stream; always of
    # images (a dataset with latents keeps its images), which the grids show.
    sample_cfg = config.data.copy_and_resolve_references()
    sample_cfg.update(
      seed=config.data.seed + 7919,
      batch_size=config.train.sample_batch * jax.process_count(),
      latents=False,
    )
    sample_batch = next(pipelines.make_iterator(sample_cfg))
    sample_keys = inputs.batch_keys(cfg, config.diffusion.loss_mask)
    sampler = make_sampler(model, codec, cfg, schedule, config)

  if config.train.eval_every:
    # Held-out captures, read once; the same generate/score path as `pippo-eval`.
    evaluator = Evaluator(config, model, cfg, codec, schedule, mesh)

  def next_batch():
    """The next global batch and the data-iterator state just after it (what a checkpoint at its
    step must hold: the loop reads one batch ahead)."""
    return (global_batch(next(data_iter), keys, batch_sh), checkpoints.IteratorSnapshot(data_iter))

  stop, received = StopSignals(), None
  wait_each_step = step_lib.wait_for_each_step(mesh)
  saved_config = checkpoints.config_dict(config)
  last, window, window_start = {}, None, time.perf_counter()
  ahead, previous = (next_batch() if start < num_steps else None), None
  try:
    for step in range(start + 1, num_steps + 1):
      (batch, data_state), ahead = ahead, None
      state, metrics = step_lib.run_step(step_fn, mesh, state, batch, rules)
      # While the step runs: the next batch onto the devices, then the previous step's checks.
      # Nothing here waits for this step except on logging steps (and on CPU, see
      # `wait_for_each_step`).
      if step < num_steps:
        ahead = next_batch()
      if wait_each_step:
        jax.block_until_ready(metrics)
      window = accumulate(window, metrics)
      for hook in hooks:
        hook(step)
      logging_step = step % config.train.log_every == 0 or step == num_steps
      for checked, at in ((previous, step - 1), (metrics if logging_step else None, step)):
        if checked is not None and int(checked["nonfinite"]) >= config.train.max_nonfinite:
          raise FloatingPointError(
            f"{int(checked['nonfinite'])} non-finite steps in a row at step {at} (loss, "
            "gradient norm or update is NaN/inf): lower optimizer.lr or check the data; "
            "parameters were left at the last finite step"
          )
      previous = metrics
      if logging_step:
        window_metrics = window.compute()
        steps_per_s = int(window.loss.count) / (time.perf_counter() - window_start)
        last = {k: float(v) for k, v in window_metrics.items()}
        last.update(
          lr=float(state_lib.learning_rate(config.optimizer)(step)),
          examples_per_sec=steps_per_s * config.batch_size,
        )
        if peak:
          last["mfu"] = steps_per_s * step_flops / (peak * jax.device_count())
        writer.write_scalars(step, last)  # clu's ReportProgress writes steps_per_sec
        log.write(step, dict(last, steps_per_sec=steps_per_s))
        window, window_start = None, time.perf_counter()
      received = stop.agreed()
      checkpoints.save(
        manager,
        step,
        state,
        data_state,
        saved_config,
        force=received is not None or step == num_steps,
      )
      if config.train.sample_every and (step % config.train.sample_every == 0 or step == num_steps):
        write_samples(
          workdir, writer, step, sampler, state, sample_batch, sample_keys, batch_sh, mesh, rules
        )
      if config.train.eval_every and step % config.train.eval_every == 0:
        evaluator(workdir, writer, log, step, state)
      if received is not None:
        logging.warning("%s: saved a checkpoint at step %d; stopping", received, step)
        break
  finally:
    manager.wait_until_finished()
    stop.restore()
    writer.flush()
  if received == "SIGINT":
    raise KeyboardInterrupt(
      f"saved a checkpoint at step {step} in {workdir}; run the same command to resume"
    )
  return last


@flax.struct.dataclass
class WindowMetrics(clu_metrics.Collection):
  """Training metrics averaged over the steps between two log lines (`skipped` counts)."""

  loss: clu_metrics.Average.from_output("loss")
  grad_norm: clu_metrics.Average.from_output("grad_norm")
  skipped: clu_metrics.Average.from_fun(lambda finite, **_: 1.0 - finite)

  def compute(self) -> dict:
    out = super().compute()
    out["skipped"] = self.skipped.total
    return out


@jax.jit
def accumulate(window: WindowMetrics | None, metrics: dict) -> WindowMetrics:
  """Merge one step's metrics into the window on the devices (no host synchronisation)."""
  step = WindowMetrics.single_from_model_output(**metrics)
  return step if window is None else window.merge(step)


class StopSignals:
  """SIGTERM / SIGINT handlers that ask the loop to save and stop at a step all processes agree
  on. A second SIGINT stops at once (KeyboardInterrupt)."""

  CODES = (None, "SIGTERM", "SIGINT")

  def __init__(self):
    self.received = 0
    self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

  def _handle(self, signum, _):
    code = 2 if signum == signal.SIGINT else 1
    if code == 2 and self.received == 2:
      raise KeyboardInterrupt("second Ctrl-C: stopped without saving")
    self.received = max(self.received, code)
    if code == 2:
      logging.warning(
        "SIGINT: saving a checkpoint at the end of this step (Ctrl-C again to stop at once)"
      )

  def agreed(self) -> str | None:
    """The signal to act on at this step (the same on every process: a collective)."""
    code = self.received
    if jax.process_count() > 1:  # processes get the signal at different steps: agree on one
      code = int(multihost_utils.process_allgather(np.int32(code)).max())
    return self.CODES[code]

  def restore(self) -> None:
    for s, handler in self.previous.items():
      signal.signal(s, handler)


def make_sampler(model, codec, cfg, schedule, config):
  """(params, batch) -> uint8 views, jitted with the codec as an argument (its weights are not
  baked into the program), with a fixed key so grids are comparable over time."""
  key = jax.random.key(config.seed + 1)
  sample = jax.jit(
    lambda p, b, c: sample_lib.sample_views(
      model,
      p,
      b,
      c,
      cfg,
      schedule,
      key,
      num_steps=config.train.sample_steps,
      eta=config.diffusion.sampler.eta,
      parameterization=config.diffusion.prediction,
    )
  )
  return lambda params, batch: sample(params, batch, codec)


class Evaluator:
  """Periodic evaluation (`train.eval_*`): every process samples the held-out captures (the
  collectives of a sharded sampler); process 0 scores them and writes WORKDIR/eval/step_N/ and
  the `eval/...` scalars."""

  def __init__(self, config, model, cfg, codec, schedule, mesh):
    from pippo_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top
    from pippo_jax.inference import generator  # pylint: disable=g-import-not-at-top

    t = config.train
    self.gen = generator.Generator(model, None, codec, cfg, config, schedule)
    self.sampler = self.gen.sampler(**self.gen.settings(num_steps=t.sample_steps))
    self.captures = evaluate.load_captures(config.data, t.eval_split, t.eval_samples, t.eval_views)
    self.mesh, self.seed, self.lpips = mesh, config.seed, t.eval_lpips

  def __call__(self, workdir, writer, log, step, state) -> None:
    from pippo_jax.evaluation import evaluate  # pylint: disable=g-import-not-at-top

    start = time.perf_counter()
    params = state.ema_params if state.ema_params is not None else state.params
    samples = evaluate.generate(
      self.gen, self.sampler, params, self.captures, seed=self.seed, mesh=self.mesh
    )
    if jax.process_index() == 0:
      result = evaluate.score(samples, lpips_net=self.lpips)
      result.update(step=step, split=self.gen.config.train.eval_split)
      folder = os.path.join(workdir, "eval", f"step_{step:07d}")
      os.makedirs(folder, exist_ok=True)
      evaluate.write_report(folder, samples, result)
      scalars = evaluate.scalars(result)
      writer.write_scalars(step, scalars)
      log.write(step, scalars)
      logging.info(
        "evaluation at step %d (%.0f s): %s",
        step,
        time.perf_counter() - start,
        ", ".join(f"{k}={v:.4g}" for k, v in sorted(scalars.items()) if "pct" not in k),
      )


def write_samples(workdir, writer, step, sampler, state, host_batch, keys, batch_sh, mesh, rules):
  """DDIM samples of the fixed sample batch -> grid PNG (samples/step_N.png) and TensorBoard."""
  batch = global_batch(host_batch, keys, batch_sh)
  params = state.ema_params if state.ema_params is not None else state.params
  with sharding.activate(mesh, rules):
    images = sampler(params, batch)
  # Gathers are collectives: every process takes part; only process 0 writes.
  images, ref, tgt = (
    multihost_utils.process_allgather(a, tiled=True)
    for a in (images, batch["ref_image"], batch["target_images"])
  )
  if jax.process_index() == 0:
    image = sample_lib.grid(ref, tgt, images)
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    sample_lib.save_png(image, os.path.join(workdir, "samples", f"step_{step:07d}.png"))
    writer.write_images(step, {"samples": image[None]})
