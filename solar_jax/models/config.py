"""ModelConfig: the architecture of a Llama/Mistral decoder, and its Hugging Face form.

Only fields that change the math live here; run settings (dtype of compute, remat,
attention kernel) are arguments of the model, and training settings live in the
ml_collections run config.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from solar_jax.errors import SolarError

SUPPORTED_MODEL_TYPES = ("llama", "mistral")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
_ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}


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
    sliding_window: int | None = None  # Mistral: key j is visible from query i iff i - W < j <= i
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 4096

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
        for flag in ("attention_bias", "mlp_bias"):
            if hf.get(flag):
                raise SolarError(f"unsupported {flag}=true in config.json (Llama/Mistral without biases only)")
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
        sliding_window = hf.get("sliding_window") if model_type == "mistral" else None
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
        else:
            hf.update(attention_bias=False, mlp_bias=False)
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
        mlp = 3 * d * self.intermediate_size
        norms = 2 * d
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
