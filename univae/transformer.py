"""The backbone: a post-LN BERT or RoFormer encoder (embeddings, layers, the masked-LM head) that
loads Hugging Face checkpoints and matches transformers' outputs (tests/test_backbone.py). UniVAE
(univae/model.py) runs it under its per-layer masks with the latent bottleneck in between.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

import masks
from univae.attention import SplitLayout, attend, resolve
from univae.checkpoint import convert_hf_state_dict, read_hf_backbone
from univae.config import UniVAEConfig

ACTIVATIONS = {
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


# ----------------------------------------------------------------------------- rotary positions


def rotary_tables(positions, head_dim, dtype=torch.float32):
    """cos, sin tables (S, head_dim) for RoFormer's rotary embedding at the given positions.

    RoFormer's layout is *interleaved*: frequency i acts on the pair (2i, 2i+1), so each angle is
    repeated twice in a row (transformers' RoFormerSinusoidalPositionalEmbedding). Computed in
    float64 like transformers' table, then cast.
    """
    inv_freq = 10000.0 ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    angles = positions.to(torch.float64)[:, None] * inv_freq[None, :]  # (S, head_dim/2)
    cos = angles.cos().repeat_interleave(2, dim=-1).to(dtype)
    sin = angles.sin().repeat_interleave(2, dim=-1).to(dtype)
    return cos, sin


def apply_rotary(x, cos, sin):
    """Rotate interleaved pairs: (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin). x (B, H, S, D)."""
    rotated = torch.stack([-x[..., 1::2], x[..., ::2]], dim=-1).flatten(-2)
    return x * cos + rotated * sin


# ----------------------------------------------------------------------------- backbone modules


class Embeddings(nn.Module):
    def __init__(self, c: UniVAEConfig):
        super().__init__()
        self.word = nn.Embedding(c.vocab_size, c.embedding_size, padding_idx=c.pad_token_id)
        self.position = nn.Embedding(c.max_position_embeddings, c.embedding_size) if c.model_type == "bert" else None
        self.token_type = nn.Embedding(c.type_vocab_size, c.embedding_size)
        self.norm = nn.LayerNorm(c.embedding_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)
        self.project = nn.Linear(c.embedding_size, c.hidden_size) if c.embedding_size != c.hidden_size else None

    def forward(self, input_ids, token_type_ids, positions):
        x = self.word(input_ids) + self.token_type(token_type_ids)
        if self.position is not None:
            x = x + self.position(positions)
        x = self.dropout(self.norm(x))
        return self.project(x) if self.project is not None else x


class Layer(nn.Module):
    """Post-LN Transformer layer: x = LN(x + Attn(x)); x = LN(x + FFN(x)). One fused QKV matmul."""

    def __init__(self, c: UniVAEConfig):
        super().__init__()
        d = c.hidden_size
        self.n_head, self.rotary_value = c.num_attention_heads, c.rotary_value
        self.qkv = nn.Linear(d, 3 * d)
        self.attn_out = nn.Linear(d, d)
        self.attn_norm = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.ffn_in = nn.Linear(d, c.intermediate_size)
        self.ffn_out = nn.Linear(c.intermediate_size, d)
        self.ffn_norm = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self.act = ACTIVATIONS[c.hidden_act]
        self.dropout = nn.Dropout(c.hidden_dropout_prob)
        self.attn_dropout = c.attention_probs_dropout_prob

    def project_kv(self, x, rope=None):
        """Keys and values of x (B, S, d) -> (B, H, S, D) each; used for the decoder's latent slot."""
        _, k, v = rearrange(self.qkv(x), "b s (three h d) -> three b h s d", three=3, h=self.n_head)
        if rope is not None:
            k = apply_rotary(k, *rope)
            v = apply_rotary(v, *rope) if self.rotary_value else v
        return k, v

    def forward(self, x, mask, backend, rope=None, cache=None):
        """x (B, S, d). `cache` (KVCache, slot indices) writes this step's K/V and attends over the cache.
        A SplitLayout that drops source query rows (src_queries) returns only the rows it keeps."""
        q, k, v = rearrange(self.qkv(x), "b s (three h d) -> three b h s d", three=3, h=self.n_head)
        if rope is not None:  # RoFormer: rotary on queries and keys (and values if rotary_value)
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
            if self.rotary_value:
                v = apply_rotary(v, *rope)
        if cache is not None:
            kv_cache, slots = cache
            k, v = kv_cache.update(slots, k, v)
        if isinstance(mask, SplitLayout):  # every row's keys and values, only the kept rows' queries
            q, x = mask.keep(q, 2), mask.keep(x, 1)
        p = self.attn_dropout if self.training else 0.0
        a = rearrange(attend(q, k, v, mask, backend, dropout_p=p), "b h s d -> b s (h d)")
        x = self.attn_norm(x + self.dropout(self.attn_out(a)))
        return self.ffn_norm(x + self.dropout(self.ffn_out(self.act(self.ffn_in(x)))))


class MLMHead(nn.Module):
    """BERT's prediction head: dense -> act -> LN -> tied decoder (+ bias)."""

    def __init__(self, c: UniVAEConfig):
        super().__init__()
        self.dense = nn.Linear(c.hidden_size, c.embedding_size)
        self.act = ACTIVATIONS[c.hidden_act]
        self.norm = nn.LayerNorm(c.embedding_size, eps=c.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(c.vocab_size))

    def forward(self, h, word_embeddings):
        return F.linear(self.norm(self.act(self.dense(h))), word_embeddings, self.bias)


class Transformer(nn.Module):
    """The shared BERT/RoFormer encoder; called as a plain bidirectional encoder it matches
    transformers' BertModel/RoFormerModel `last_hidden_state` (tests/test_backbone.py)."""

    def __init__(self, config: UniVAEConfig):
        super().__init__()
        self.config = config
        self.embed = Embeddings(config)
        self.layers = nn.ModuleList(Layer(config) for _ in range(config.num_hidden_layers))
        self.head = MLMHead(config)
        self.apply(self._init_weights)

    def _init_weights(self, m):
        std = self.config.initializer_range
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=std)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Embedding):
            nn.init.normal_(m.weight, std=std)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def rope(self, positions, dtype=torch.float32):
        if self.config.model_type != "roformer":
            return None
        return rotary_tables(positions, self.config.head_dim, dtype)

    def logits(self, h):
        return self.head(h, self.embed.word.weight)

    @classmethod
    def from_pretrained(cls, path, **overrides):
        """A HF BERT/RoFormer directory or a bundled backbone's name -> the plain backbone with its weights."""
        config, hf_state_dict = read_hf_backbone(path, **overrides)
        transformer = cls(config)
        sd, has_head = convert_hf_state_dict(hf_state_dict, transformer)
        transformer.load_state_dict(sd, strict=has_head)
        return transformer

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, positions=None):
        """Plain bidirectional encoder. attention_mask: (B, S) with 1 for real tokens, 0 for padding;
        positions (S,): default 0..S-1 (the masked-LM phase also trains the target slot, maxlen + t)."""
        B, S = input_ids.shape
        if positions is None:
            positions = torch.arange(S, device=input_ids.device)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        backend = resolve(self.config.attn, input_ids.device, self.config.head_dim)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        keep = attention_mask.bool()

        def mask_mod(b, h, q_idx, kv_idx):
            return keep[b, kv_idx]

        mask = build_mask(mask_mod, B, S, S, backend, input_ids.device)
        h = self.embed(input_ids, token_type_ids, positions)
        return self.run_layers(h, [mask] * len(self.layers), backend, self.rope(positions))

    def run_layers(self, h, layer_masks, backend, rope=None, caches=None, at_input=None):
        """The one walk through the layers: h (B, S, d) goes through layer l under layer_masks[l].

        Fewer masks than layers stop the walk early, at the input of the first layer not run.
        at_input(l, h) -> h, optional: rewrites the input of layer l, and of the layer where an early
        stop ends (UniVAE's bottleneck on position 0). caches[l] = (KVCache, slots), optional: a
        one-token decoding step that writes its keys and values there and attends over the cache. A
        SplitLayout that keeps only some query rows keeps their rotary rows for the layer above."""
        for l, mask in enumerate(layer_masks):
            if at_input is not None:
                h = at_input(l, h)
            h = self.layers[l](h, mask, backend, rope, cache=None if caches is None else caches[l])
            if rope is not None and isinstance(mask, SplitLayout):
                rope = tuple(mask.keep(t, 0) for t in rope)
        if at_input is not None and len(layer_masks) < len(self.layers):
            h = at_input(len(layer_masks), h)
        return h


def build_mask(mask_mod, batch, q_len, kv_len, backend, device):
    """The mask object a backend takes: dense bool (B, 1, Q, K), or a BlockMask for flex.
    (split takes a SplitLayout, built in UniVAE.layer_masks; for any other mask it falls back to sdpa.)"""
    if backend == "flex":
        return masks.block_mask(mask_mod, batch, q_len, kv_len, device)
    return masks.materialize(mask_mod, q_len, kv_len, batch=batch, device=device).unsqueeze(1)


def load_transformer(path, **overrides):
    """A HF BERT/RoFormer directory or a bundled backbone's name -> Transformer (the plain backbone)."""
    return Transformer.from_pretrained(path, **overrides)
