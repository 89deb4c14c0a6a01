"""A LlamaForCausalLM that carries the music adapter and takes the music prompt as a forward argument.

generate() passes on only keyword arguments that the model's forward names, and expands tensor arguments
along the batch for num_return_sequences; naming `music_prompt` here is all it takes for KV-cached
sampling with batches to carry the prompt to every step.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from mullama.errors import MullamaError
from mullama.model.adapter import ModalityAdapters, MusicAdapter, adapter_prompts
from mullama.model.attention import CONTEXT_KEY, PREFIX, MusicContext


class MusicLlamaForCausalLM(LlamaForCausalLM):
    """Frozen LLaMA + `music_adapter`; layers before the first adapted layer never see the audio.

    Activation checkpointing must stay non-reentrant (transformers' default): reentrant checkpoints
    see only positional inputs and would not carry gradients back to the prompt.
    """

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.music_adapter: MusicAdapter | ModalityAdapters | None = None

    def attach_adapter(self, adapter: MusicAdapter | ModalityAdapters) -> None:
        config = adapter.config
        llm = self.config
        expected = (llm.hidden_size, llm.num_attention_heads, llm.num_hidden_layers)
        if (config.d_model, config.num_heads, config.num_layers) != expected:
            raise MullamaError(
                f"adapter built for d_model {config.d_model}, {config.num_heads} heads, {config.num_layers} layers; "
                f"this LLM has {expected[0]}, {expected[1]} heads, {expected[2]} layers")
        if not self.config._attn_implementation.startswith(PREFIX):
            raise MullamaError("the LLM was loaded without the music attention; load it through MusicLlama")
        self.music_adapter = adapter

    def music_prompt(self, stacks: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """(B, L+1, H) stacks, or {modality: stacks}, -> (B, N, Q, d_model) prompts for `forward(music_prompt=...)`."""
        if self.music_adapter is None:
            raise MullamaError("no music adapter attached")
        return adapter_prompts(self.music_adapter, stacks)

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Any = None,
                inputs_embeds: torch.Tensor | None = None, labels: torch.LongTensor | None = None,
                use_cache: bool | None = None, logits_to_keep: int | torch.Tensor = 0,
                music_prompt: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """LlamaForCausalLM.forward plus `music_prompt` (B, N, Q, d_model); without it the model is plain LLaMA."""
        kwargs.update(self._music_context(music_prompt))
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache, inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                               logits_to_keep=logits_to_keep, **kwargs)

    def _music_context(self, music_prompt: torch.Tensor | None) -> dict[str, Any]:
        if music_prompt is None:
            return {}
        if self.music_adapter is None:
            raise MullamaError("a music prompt was given but no music adapter is attached")
        return {CONTEXT_KEY: MusicContext(music_prompt, self.music_adapter.gates,
                                          self.music_adapter.config.first_adapted_layer)}

    def final_hidden(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                     music_prompt: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, d_model) hidden states after the last layer and final norm (no LM head): what the output tokens
        of MuMu-LLaMA's generator are read from."""
        output = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=False, **self._music_context(music_prompt))
        return output.last_hidden_state
