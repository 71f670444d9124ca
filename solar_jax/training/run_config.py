"""The run config every training config file starts from, and its validation.

Config files (configs/cpt.py, ...) call `base_config()` and change what differs. Validation
runs before anything is loaded or compiled: a bad value costs a second, not a compile.
"""

from __future__ import annotations

import ml_collections

from solar_jax.errors import SolarError
from solar_jax.models.attention import check_seq_len as check_attention_seq_len
from solar_jax.models.transformer import ATTENTION_IMPLS
from solar_jax.models.transformer import DTYPES
from solar_jax.models.transformer import LOGITS_DTYPES, REMAT_POLICIES
from solar_jax.parallel import sharding
from solar_jax.training.losses import DPO_LOSSES
from solar_jax.data.sft_data import check_template
from solar_jax.data.task_data import TASKS


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "cpt"  # cpt (documents) | sft (instructions, prompt masked) | dpo (preference pairs)
    c.template = "solar"  # sft/dpo prompt template: alpaca | solar | chat (the tokenizer's own)
    c.packing = True  # sft: pack examples first-fit (never split); False: one example per row
    c.dpo = ml_collections.ConfigDict(dict(
        beta=0.1,
        loss_type="sigmoid",  # sigmoid | ipo | hinge | robust
        label_smoothing=0.0,  # > 0 with sigmoid: cDPO
        reference="frozen",  # frozen (a copy in memory) | precomputed (log-probs computed once)
    ))
    # The model: an HF dir (empty: the real model SmolLM2-135M-Instruct, fetched on first
    # use), or a preset of random weights (model_preset, e.g. "tiny"), optionally
    # up-scaled on the fly (upscale_m >= 0: s = 2(n - m) layers; or upscale_slices,
    # e.g. 0:24,8:32 or expand:P for LLaMA Pro's P interleaved blocks).
    c.model_dir = ""
    c.model_preset = ""
    c.tokenizer = ""  # "" = the model dir's tokenizer; a dir; or "bytes" (tiny models)
    c.upscale_m = -1
    c.upscale_slices = ""
    c.upscale_init = "copy"  # repeated layers: copy (SOLAR) | identity (start at the base's function) | scaled
    c.upscale_train = "all"  # all | new: only the repeated layers learn, the rest frozen (LLaMA Pro)
    c.workdir = ""
    # Resuming a workdir whose run.json records other values of the keys that decide the
    # model, data, batches and seed is refused; name the keys whose change you accept
    # (comma-separated, e.g. "data.train_files,batch_size"): the change is recorded.
    c.resume_changes = ""
    c.num_steps = 100
    c.batch_size = 8  # global, in sequences
    c.seq_len = 256
    c.grad_accum_steps = 1  # microbatches per step (same global batch, less memory)
    c.learning_rate = 1e-4
    c.end_lr_ratio = 0.1
    c.schedule = "cosine"  # cosine | linear | constant
    c.warmup_steps = 10
    c.weight_decay = 0.1
    c.decay_embeddings = False
    c.adam_b1 = 0.9
    c.adam_b2 = 0.95
    c.adam_eps = 1e-8
    c.grad_clip = 1.0
    c.dtype = "float32"  # compute dtype; params stay float32
    # none | full | dots | dots_no_batch. dots_no_batch (keep the projections' outputs, recompute
    # the elementwise ops and attention scores) needs less memory than none, and on XLA CPU it is
    # also faster: fewer stacked residuals to write (figures: docs/results/defaults).
    c.remat = "dots_no_batch"
    # Decoder layers per iteration of the layer loop (lax.scan's unroll): 1 compiles one layer's
    # body (fastest compile, least code); a value >= the model's layers unrolls the loop, which
    # XLA's cost model rates a few percent faster at 10.7B for much more memory, code and
    # compile time (docs/results/defaults). The fast planner models the loop (scan_unroll=1):
    # check an unrolled step with plan --compile.
    c.scan_unroll = 1
    # The vocab projection's output: float32 (accumulated in float32 and kept: the precise
    # logits) or compute (rounded to the compute dtype, then float32 for the softmax, as
    # MaxText's default and transformers' bf16 autocast do). compute halves the logits'
    # memory, which matters most with a large vocabulary (docs/results/defaults).
    c.logits_dtype = "float32"
    c.attention_impl = "auto"  # auto (splash on TPU, cudnn on GPU, xla elsewhere) | xla | cudnn | splash
    c.memory_check = True  # refuse, before compiling, a config the memory planner says cannot fit
    c.checkpoint_dir = ""  # "" = workdir/checkpoints; a path every host sees (NFS, gs://bucket/...)
    # 0: no checkpoints (the run cannot resume; its HF export is what it keeps): the pipelines'
    # stage runs, whose checkpoints nothing reads (a 44-layer SmolLM2 state is 2.2 GB a save).
    c.checkpoint_every = 50
    c.keep_checkpoints = 3
    c.async_checkpoint = True
    # zstd-compressed checkpoints (orbax's StandardSave always compresses): a float32 state
    # barely shrinks, and the writes take several times longer; a background save takes host
    # CPU from the steps (docs/results/defaults).
    c.checkpoint_compression = False
    c.eval_every = 50
    c.eval_batches = 8  # 0: the whole held-out set
    c.log_every = 1
    c.seed = 0
    c.data = ml_collections.ConfigDict(dict(
        train_files="",  # comma-separated files or globs (.txt, .jsonl, .parquet); "" = builtin
        eval_files="",  # "" = hold out eval_fraction of the training documents
        builtin="pydoc",  # cpt: pydoc; sft/dpo: synth_math (Synth. Math-Instruct / -Alignment)
        num_builtin=1000,  # sft/dpo: synthetic problems generated for training
        text_field="text",
        eval_fraction=0.05,
        add_bos=True,  # the tokenizer's own BOS convention
        add_eos=True,
        # cpt: every row of the batch its own packed stream, so each host reads only the
        # documents of its rows (pods); False: one stream, every host packs the whole batch.
        stream_per_row=False,
        # A token shard dir: check every file's sha256 against the manifest at start (each
        # host; the time is printed). False skips it for very large corpora (sizes are
        # always checked).
        verify_shards=True,
        num_threads=0,  # grain read threads; 0 on small machines
        prefetch=0,
    ))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.export = ml_collections.ConfigDict(dict(enabled=True, dtype="float32", max_shard_size="5GB"))
    return c


def tiny_variant(c: ml_collections.ConfigDict, workdir: str) -> None:
    """What every config's `tiny` variant shares: a tiny random model with the byte tokenizer,
    batches of 8, a high learning rate (tests and smoke runs: seconds). The file sets the rest."""
    c.model_preset, c.tokenizer, c.workdir = "tiny", "bytes", workdir
    c.batch_size, c.learning_rate, c.warmup_steps, c.eval_batches = 8, 3e-3, 2, 2


def solar_variant(c: ml_collections.ConfigDict, workdir: str) -> None:
    """What every config's `solar` variant (10.7B on a TPU slice or GPU hosts) shares: 4096-token
    rows, bf16 compute with dots_no_batch remat, FSDP over every device, a bf16 export."""
    c.workdir, c.seq_len = workdir, 4096
    c.dtype, c.remat = "bfloat16", "dots_no_batch"
    c.mesh.data, c.mesh.fsdp = 1, -1
    c.export.dtype = "bfloat16"


def check_variant(variant: str, known: tuple[str, ...]) -> None:
    if variant not in known:
        raise ValueError(f"unknown variant {variant!r}; known: {', '.join(known)}")


def check_keys(config: ml_collections.ConfigDict, reference: ml_collections.ConfigDict | None = None,
               prefix: str = "") -> None:
    """Every key of `config` must exist in the reference (programmatic configs too)."""
    reference = reference or base_config()
    for key in config.keys():
        if key not in reference:
            raise SolarError(f"unknown config key {prefix}{key}")
        value = config[key]
        if isinstance(value, ml_collections.ConfigDict) and isinstance(reference[key], ml_collections.ConfigDict):
            check_keys(value, reference[key], f"{prefix}{key}.")


def check_seq_len(c: ml_collections.ConfigDict, max_positions: int) -> None:
    if c.seq_len > max_positions:
        raise SolarError(f"seq_len={c.seq_len} is longer than the model's max_position_embeddings={max_positions}")


def validate(c: ml_collections.ConfigDict, num_devices: int, max_positions: int | None = None) -> None:
    """Config errors caught before compiling, each with one clear line."""
    check_keys(c)
    for key in ("num_steps", "batch_size", "grad_accum_steps", "eval_every", "log_every", "scan_unroll"):
        if c[key] <= 0:
            raise SolarError(f"{key} must be positive, got {c[key]}")
    if c.checkpoint_every < 0:
        raise SolarError(f"checkpoint_every must be positive, or 0 for no checkpoints; got {c.checkpoint_every}")
    if c.seq_len < 2:
        raise SolarError(f"seq_len must be at least 2, got {c.seq_len}")
    if c.dtype not in DTYPES:
        raise SolarError(f"unknown dtype {c.dtype!r}; known: {', '.join(DTYPES)}")
    if c.remat not in REMAT_POLICIES:
        raise SolarError(f"unknown remat {c.remat!r}; known: {', '.join(REMAT_POLICIES)}")
    if c.logits_dtype not in LOGITS_DTYPES:
        raise SolarError(f"unknown logits_dtype {c.logits_dtype!r}; known: {', '.join(LOGITS_DTYPES)}")
    if c.attention_impl not in ATTENTION_IMPLS:
        raise SolarError(f"unknown attention_impl {c.attention_impl!r}; known: {', '.join(ATTENTION_IMPLS)}")

    check_attention_seq_len(c.attention_impl, c.seq_len)
    if c.learning_rate <= 0:
        raise SolarError(f"learning_rate must be positive, got {c.learning_rate}")
    if not 0 < c.data.eval_fraction < 1:
        raise SolarError(f"data.eval_fraction must be in (0, 1), got {c.data.eval_fraction}")
    data, fsdp, tensor = sharding.mesh_shape(c.mesh.data, c.mesh.fsdp, c.mesh.tensor, num_devices)
    dp = data * fsdp
    if c.batch_size % c.grad_accum_steps:
        raise SolarError(f"batch_size={c.batch_size} is not divisible by grad_accum_steps={c.grad_accum_steps}")
    micro = c.batch_size // c.grad_accum_steps
    if micro % dp:
        raise SolarError(f"batch_size={c.batch_size} (microbatch {micro}) is not divisible by the data-parallel "
                         f"size {dp} (mesh data={data} x fsdp={fsdp})")
    if max_positions is not None:
        check_seq_len(c, max_positions)

    if c.task not in TASKS:
        raise SolarError(f"unknown task {c.task!r}; known: {', '.join(TASKS)}")
    if c.task != "cpt":
        check_template(c.template)
    if c.task == "dpo":
        if c.dpo.loss_type not in DPO_LOSSES:
            raise SolarError(f"unknown dpo.loss_type {c.dpo.loss_type!r}; known: {', '.join(DPO_LOSSES)}")
        if c.dpo.reference not in ("frozen", "precomputed"):
            raise SolarError(f"dpo.reference must be frozen or precomputed, got {c.dpo.reference!r}")
        if not 0 <= c.dpo.label_smoothing < 0.5 or c.dpo.beta <= 0:
            raise SolarError("dpo.beta must be > 0 and dpo.label_smoothing in [0, 0.5)")
    if c.model_dir and c.model_preset:
        raise SolarError("give model_dir or model_preset, not both")
