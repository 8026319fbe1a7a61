"""Frozen-prefix activation cache: when only the top decoder layers train, the layers below them are a fixed
function of the tokens, so each sequence runs through them once per training run."""

from __future__ import annotations

import contextlib

import torch
import torch.nn as nn


def _decoder_layers(model) -> nn.ModuleList:
    trunk = getattr(model, model.base_model_prefix, model)
    layers = getattr(trunk, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise NotImplementedError(f"{type(trunk).__name__} has no `layers` ModuleList: adapter_layers and the "
                                  "prefix cache support Llama-style decoders")
    return layers


class FrozenPrefixCache:
    """Per-sequence outputs of decoder layers ``[0, start)``, keyed by the sequence's tokens.

    ``hidden_states`` runs the bottom layers only for sequences not seen before (no grad), then the top layers
    ``[start, L)`` + final norm from the cached states via ``inputs_embeds``. Positions and the causal mask are
    rebuilt from ``attention_mask`` exactly as in a full forward pass.
    """

    def __init__(self, start: int):
        self.start = start
        self.store: dict[bytes, torch.Tensor] = {}
        self.hits = self.misses = 0

    @staticmethod
    def _key(ids: torch.Tensor, mask: torch.Tensor) -> bytes:
        # Positions are arange(T) whatever the padding, so the key includes where the tokens start.
        pos = mask.nonzero()
        offset = int(pos[0]) if len(pos) else 0
        return offset.to_bytes(4, "little") + ids[mask.bool()].cpu().numpy().tobytes()

    @contextlib.contextmanager
    def _layers(self, trunk, lo: int, hi: int | None, keep_norm: bool):
        layers, norm = trunk.layers, trunk.norm
        trunk.layers = nn.ModuleList(list(layers)[lo:hi])
        if not keep_norm:
            trunk.norm = nn.Identity()
        try:
            yield
        finally:
            trunk.layers, trunk.norm = layers, norm

    def hidden_states(self, trunk, input_ids, attention_mask):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keys = [self._key(i, m) for i, m in zip(input_ids, attention_mask)]
        missing = [b for b, k in enumerate(keys) if k not in self.store]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        if missing:
            with torch.no_grad(), self._layers(trunk, 0, self.start, keep_norm=False):
                out = trunk(input_ids=input_ids[missing], attention_mask=attention_mask[missing], use_cache=False)
            for row, b in enumerate(missing):
                self.store[keys[b]] = out.last_hidden_state[row][attention_mask[b].bool()].detach()
        first = self.store[keys[0]]
        prefix = first.new_zeros(*input_ids.shape, first.shape[-1])
        for b, k in enumerate(keys):
            prefix[b, attention_mask[b].bool()] = self.store[k]
        with self._layers(trunk, self.start, None, keep_norm=True):
            out = trunk(inputs_embeds=prefix, attention_mask=attention_mask, use_cache=False)
        return out.last_hidden_state
