"""Merging HF dirs (or run dirs), streamed tensor by tensor (SOLAR merges two DPO candidates).

  python -m solar_jax.merge --config=configs/merge.py --config.method=slerp \
      --config.model_dir=A,B --config.t=0.5 --config.output_dir=OUT
  python -m solar_jax.merge --config.method=linear --config.model_dir=A,B --config.weights=0.5,0.5 ...
  python -m solar_jax.merge --config.method=ties --config.base=BASE --config.model_dir=A,B \
      --config.weights=0.5,0.5 --config.density=0.5 ...
  python -m solar_jax.merge --config.yaml=mergekit_style.yaml --config.output_dir=OUT
"""

import ml_collections
from ml_collections import config_dict


def get_config(arg=None):
    del arg
    c = ml_collections.ConfigDict()
    c.method = "linear"  # linear | slerp | task_arithmetic | ties | dare_ties | dare_linear
    c.model_dir = ""  # comma-separated HF dirs or run dirs
    c.base = ""  # base model dir (slerp: t=0 end; task arithmetic family: the deltas' origin)
    c.weights = ""  # comma-separated, one per non-base model; empty: equal weights
    c.density = ""  # ties / dare: fraction of each delta kept
    c.t = "0.5"  # slerp: a number, or comma-separated anchors across layers (0,0.5,1)
    c.t_self_attn = ""  # slerp: t for tensors named self_attn (mergekit filter)
    c.t_mlp = ""  # slerp: t for tensors named mlp
    c.normalize = config_dict.placeholder(bool)  # True / False; unset keeps the method's default
    c.seed = 0  # dare's Bernoulli masks
    # exact: float32 math, only the output rounded; mergekit: task_arithmetic/ties/dare computed
    # in the merge's dtype as mergekit 0.1.5 does (bf16 task vectors, DARE's L1 rescale), for
    # outputs equal to mergekit's (README: "TIES and DARE against mergekit")
    c.numerics = "exact"
    c.yaml = ""  # a mergekit-style YAML file: it names the models, method and parameters instead
    c.dtype = ""  # empty keeps the input dtype (a YAML's dtype wins)
    c.max_shard_size = "5GB"
    c.output_dir = ""
    c.overwrite = False
    return c
