"""ModelConfig: the architecture of a Llama/Mistral/Qwen2/Qwen3 decoder, and its Hugging Face form.

The four families are one decoder with a flag per difference (transformers' modeling files):
  llama    attention_bias: a bias on q, k, v and o (off in every released Llama)
  mistral  a sliding window on every layer; no biases
  qwen2    a bias on q, k and v (never on o); often tied embeddings; a sliding window on
           the layers from max_window_layers on when use_sliding_window
  qwen3    an RMSNorm over each head of q and of k, before RoPE; an explicit head_dim;
           attention_bias as Llama's; the sliding window as Qwen2's

Only fields that change the math live here; run settings (dtype of compute, remat,
attention kernel) are arguments of the model, and training settings live in the
ml_collections run config.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from solar_jax.errors import SolarError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                  "qwen3": "Qwen3ForCausalLM"}
_QWEN = ("qwen2", "qwen3")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """HF `rope_parameters` beyond the default: 'linear' uses factor; 'llama3' all four."""

    rope_type: str  # "linear" | "llama3"
    factor: float
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None


# config.json keys without which the model cannot be built.
REQUIRED_HF_KEYS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    model_type: str = "llama"
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    sliding_window: int | None = None  # every layer: key j is visible from query i iff i - W < j <= i
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096
    qkv_bias: bool = False  # q, k and v projections add a bias (Qwen2; Llama/Qwen3 attention_bias)
    o_bias: bool = False  # the output projection adds a bias (Llama/Qwen3 attention_bias)
    qk_norm: bool = False  # RMSNorm over each head of q and k before RoPE (Qwen3)

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise SolarError(
                f"unsupported model_type {self.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        if self.num_heads % self.num_kv_heads:
            raise SolarError(f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
        if self.head_dim % 2:
            raise SolarError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads"):
            if getattr(self, name) <= 0:
                raise SolarError(f"{name} must be positive, got {getattr(self, name)}")
        layout = (self.qkv_bias, self.o_bias, self.qk_norm)
        allowed = {"llama": [(False, False, False), (True, True, False)], "mistral": [(False, False, False)],
                   "qwen2": [(True, False, False)], "qwen3": [(False, False, True), (True, True, True)]}
        if layout not in allowed[self.model_type]:
            raise SolarError(f"a {self.model_type} model cannot have qkv_bias={self.qkv_bias}, o_bias={self.o_bias}, "
                             f"qk_norm={self.qk_norm}")

    # ---- Hugging Face config.json <-> ModelConfig -------------------------------------
    @classmethod
    def from_hf_config(cls, hf: dict[str, Any]) -> ModelConfig:
        """Reads a config.json dict (transformers 4 or 5 layout); refuses what it cannot compute."""
        model_type = hf.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise SolarError(
                f"unsupported model_type {model_type!r} in config.json; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        if hf.get("hidden_act", "silu") != "silu":
            raise SolarError(f"unsupported hidden_act {hf['hidden_act']!r}; supported: silu")
        if hf.get("mlp_bias"):
            raise SolarError("unsupported mlp_bias=true in config.json (MLPs without biases only)")
        attention_bias = bool(hf.get("attention_bias", False))
        if attention_bias and model_type == "mistral":
            raise SolarError("unsupported attention_bias=true in a mistral config.json (transformers' Mistral "
                             "has no biases)")
        missing = [k for k in REQUIRED_HF_KEYS if k not in hf]
        if missing:
            raise SolarError(f"config.json lacks {', '.join(missing)}")
        for key in (*REQUIRED_HF_KEYS, "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = hf.get(key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise SolarError(f"config.json: {key} must be a positive integer, got {value!r}")
        num_heads = hf["num_attention_heads"]
        head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
        rope_theta, rope_scaling = _rope_from_hf(hf)
        sliding_window = (hf.get("sliding_window") if model_type == "mistral" else
                          _qwen_window(hf) if model_type in _QWEN else None)
        return cls(
            model_type=model_type,
            vocab_size=hf["vocab_size"],
            hidden_size=hf["hidden_size"],
            intermediate_size=hf["intermediate_size"],
            num_layers=hf["num_hidden_layers"],
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            rope_scaling=rope_scaling,
            sliding_window=sliding_window,
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            max_position_embeddings=hf.get("max_position_embeddings", 4096),
            qkv_bias=model_type == "qwen2" or attention_bias,
            o_bias=attention_bias and model_type != "qwen2",
            qk_norm=model_type == "qwen3",
        )

    def to_hf_config(self, base: dict[str, Any] | None = None) -> dict[str, Any]:
        """A config.json dict in transformers 5 layout; keys of `base` (bos/eos ids...) are kept."""
        hf = {k: v for k, v in (base or {}).items() if k not in ("rope_scaling", "rope_theta")}
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope.update({k: v for k, v in dataclasses.asdict(self.rope_scaling).items() if v is not None})
        hf.update(
            architectures=[_ARCHITECTURES[self.model_type]],
            model_type=self.model_type,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            hidden_act="silu",
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters=rope,
            tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=self.max_position_embeddings,
        )
        if self.model_type == "mistral":
            hf["sliding_window"] = self.sliding_window
        elif self.model_type in _QWEN:
            # Per-layer keys are written for this depth (an up-scaled model has more layers
            # than the base whose keys are kept).
            windowed = self.sliding_window is not None
            hf.update(use_sliding_window=windowed, sliding_window=self.sliding_window,
                      max_window_layers=0 if windowed else self.num_layers,
                      layer_types=["sliding_attention" if windowed else "full_attention"] * self.num_layers)
            if self.model_type == "qwen3":
                hf["attention_bias"] = self.o_bias
        else:
            hf.update(attention_bias=self.o_bias, mlp_bias=False)
            hf.pop("sliding_window", None)
        return hf

    # ---- sizes ------------------------------------------------------------------------
    @property
    def num_groups(self) -> int:
        return self.num_heads // self.num_kv_heads

    def param_counts(self) -> dict[str, int]:
        """Parameters per component (the embedding once when tied)."""
        d, h = self.hidden_size, self.head_dim
        attn = d * h * (2 * self.num_heads + 2 * self.num_kv_heads)
        attn += h * (self.num_heads + 2 * self.num_kv_heads) * self.qkv_bias + d * self.o_bias
        mlp = 3 * d * self.intermediate_size
        norms = 2 * d + 2 * h * self.qk_norm
        counts = {
            "embed": self.vocab_size * d,
            "layers.attn": self.num_layers * attn,
            "layers.mlp": self.num_layers * mlp,
            "layers.norms": self.num_layers * norms,
            "final_norm": d,
        }
        if not self.tie_word_embeddings:
            counts["lm_head"] = self.vocab_size * d
        return counts

    def num_params(self) -> int:
        return sum(self.param_counts().values())


def _qwen_window(hf: dict[str, Any]) -> int | None:
    """The sliding window of a Qwen2/Qwen3 config.json, as transformers reads it: layer i is
    windowed iff use_sliding_window and its layer_types entry (default: i >= max_window_layers)
    is sliding_attention. All layers or none are supported; a mix is refused."""
    window = hf.get("sliding_window") if hf.get("use_sliding_window") else None
    layers = hf["num_hidden_layers"]
    types = hf.get("layer_types") or ["sliding_attention" if window is not None and i >= hf.get(
        "max_window_layers", 28) else "full_attention" for i in range(layers)]
    if len(types) != layers or set(types) - {"sliding_attention", "full_attention"}:
        raise SolarError(f"config.json: layer_types must list full_attention or sliding_attention for each of the "
                         f"{layers} layers")
    windowed = [t == "sliding_attention" and window is not None for t in types]
    if any(windowed) and not all(windowed):
        raise SolarError(f"config.json: a sliding window on {sum(windowed)} of {layers} layers (use_sliding_window, "
                         "max_window_layers) is not supported: every layer or none")
    if any(windowed) and (not isinstance(window, int) or window <= 0):
        raise SolarError(f"config.json: sliding_window must be a positive integer, got {window!r}")
    return window if all(windowed) else None


def _rope_from_hf(hf: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    # transformers 5 writes rope_parameters={rope_type, rope_theta, ...}; 4.x wrote
    # rope_theta at the top and rope_scaling={type|rope_type, factor, ...} or null. Given
    # both, transformers takes rope_scaling whole (PreTrainedConfig.convert_rope_params_to_dict:
    # `rope_scaling or rope_parameters`; rope_theta then from the top level or 10000):
    # a config whose two keys mean different RoPE is refused, not read one way or the other.
    new, legacy = hf.get("rope_parameters"), hf.get("rope_scaling")
    if new and legacy and _rope_meaning(new, hf) != _rope_meaning(legacy, hf):
        raise SolarError(f"config.json: rope_parameters {_rope_meaning(new, hf)} and rope_scaling "
                         f"{_rope_meaning(legacy, hf)} disagree (transformers would use rope_scaling); "
                         "remove the one that is wrong")
    return _rope_params(dict(legacy or new or {}), hf)


def _rope_meaning(params: dict[str, Any], hf: dict[str, Any]) -> dict[str, Any]:
    """What a rope dict means once transformers' defaults are filled in (any rope type)."""
    meaning = {k: v for k, v in params.items() if k != "type"}
    meaning["rope_type"] = params.get("rope_type", params.get("type", "default"))
    meaning.setdefault("rope_theta", hf.get("rope_theta", 10000.0))
    if meaning["rope_type"] in ("llama3", "yarn", "longrope"):
        meaning.setdefault("original_max_position_embeddings", hf.get("max_position_embeddings"))
    return {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v
            for k, v in sorted(meaning.items())}


def _rope_params(params: dict[str, Any], hf: dict[str, Any]) -> tuple[float, RopeScaling | None]:
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise SolarError(f"unsupported rope type {rope_type!r}; supported: {', '.join(SUPPORTED_ROPE_TYPES)}")
    if params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise SolarError("unsupported partial_rotary_factor != 1.0")
    if rope_type == "default":
        return theta, None
    factor = float(params["factor"])
    if rope_type == "linear":
        return theta, RopeScaling("linear", factor)
    return theta, RopeScaling(
        "llama3", factor,
        low_freq_factor=float(params["low_freq_factor"]),
        high_freq_factor=float(params["high_freq_factor"]),
        original_max_position_embeddings=int(params.get(
            "original_max_position_embeddings", hf.get("max_position_embeddings"))),
    )


PRESETS = {
    # Tests: GQA with 2 groups, tiny everything.
    "tiny": ModelConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=4,
                        num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=512),
    "smollm2-135m": ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                                num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64,
                                rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True,
                                max_position_embeddings=8192),
    # SOLAR's base: Mistral-7B weights in the Llama-2 layout (32 layers, GQA 32/8).
    "mistral-7b": ModelConfig(model_type="mistral", vocab_size=32000, hidden_size=4096,
                              intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8,
                              head_dim=128, rms_norm_eps=1e-5, sliding_window=4096,
                              max_position_embeddings=32768),
    # Qwen2.5-7B: q/k/v biases, GQA 28/4, a 152k vocabulary (config.json of Qwen/Qwen2.5-7B).
    "qwen2.5-7b": ModelConfig(model_type="qwen2", vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                              num_layers=28, num_heads=28, num_kv_heads=4, head_dim=128, rms_norm_eps=1e-6,
                              rope_theta=1000000.0, max_position_embeddings=32768, qkv_bias=True),
    # Qwen3-8B: q/k norms, GQA 32/8 (config.json of Qwen/Qwen3-8B).
    "qwen3-8b": ModelConfig(model_type="qwen3", vocab_size=151936, hidden_size=4096, intermediate_size=12288,
                            num_layers=36, num_heads=32, num_kv_heads=8, head_dim=128, rms_norm_eps=1e-6,
                            rope_theta=1000000.0, max_position_embeddings=40960, qk_norm=True),
    # SOLAR 10.7B: the Llama-2 architecture with 48 layers (s = 2(32 - 8)).
    "solar-10.7b": ModelConfig(vocab_size=32000, hidden_size=4096, intermediate_size=14336,
                               num_layers=48, num_heads=32, num_kv_heads=8, head_dim=128,
                               rms_norm_eps=1e-5, max_position_embeddings=4096),
}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise SolarError(f"unknown model preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def rope_inv_freq(config: ModelConfig):
    """Inverse frequencies [H/2] in float32, computed exactly as transformers does."""
    import numpy as np

    h = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (np.arange(0, h, 2, dtype=np.int64).astype(np.float32) / h))
    inv_freq = inv_freq.astype(np.float32)
    s = config.rope_scaling
    if s is None:
        return inv_freq
    if s.rope_type == "linear":
        return (inv_freq / np.float32(s.factor)).astype(np.float32)
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return np.where(medium, smoothed, scaled).astype(np.float32)
