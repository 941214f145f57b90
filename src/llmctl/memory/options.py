"""The llama-server flags that change memory use, with llama-server's defaults.

`LaunchOptions` is what every estimate stage reads; a profile (`estimate.options_from_profile`) or a
command line (`cmdline.parse_llama_args`) fills it. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmctl.llama.vocab import CPU_BUFFER, FlashAttn, n_cpu_moe_patterns, parse_overrides


@dataclass
class LaunchOptions:
    """The llama-server flags that change memory use, with llama-server's defaults."""

    ctx_size: int = 0  # -c; 0 = the model's trained context
    parallel: int = -1  # -np; -1 = auto (4 slots, unified KV)
    kv_unified: bool | None = None  # -kvu / -no-kvu; None = llama-server's default
    swa_full: bool = False
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    flash_attn: FlashAttn = "auto"
    n_gpu_layers: int = -1  # -ngl; -1 = all
    batch_size: int = 2048
    ubatch_size: int = 512
    no_kv_offload: bool = False
    n_cpu_moe: int = 0  # --n-cpu-moe: expert tensors of the first N blocks on the CPU
    override_tensor: str | None = None  # -ot PATTERN=BUFFER,...

    def tensor_overrides(self) -> list[tuple[str, str]]:
        """(pattern, buffer) pairs in the order llama-server reads them from llmctl's command line
        (--n-cpu-moe before -ot; common/arg.cpp appends both to one list, first match wins)."""
        out = [(p, CPU_BUFFER) for p in n_cpu_moe_patterns(self.n_cpu_moe)]
        return out + (parse_overrides(self.override_tensor) if self.override_tensor else [])
