"""BERT's masked-LM corruption and loss on the shared Transformer, for `python -m univae.pretrain`.

UniVAE assumes a pretrained BERT: the same layers read the source bidirectionally and decode the
target causally, and the latent bottleneck only has to learn what to pass. Masked-LM pretraining
(Devlin et al. 2019: 15% of the real tokens are chosen; of those 80% become [MASK], 10% a random
token, 10% stay) gives the shared layers the language before the VAE is fine-tuned on top.

A sentence may sit where UniVAE will later see it in either half: the source slot (positions 0..,
segment 0) or the target slot (positions maxlen.., segment 1), so that both halves' position and
segment embeddings are trained. Attention is bidirectional over the real tokens.
"""

import torch
import torch.nn.functional as F

IGNORE = -100


def mask_tokens(ids, mask_id, vocab_size, special_ids, rate=0.15):
    """ids (B, T) -> (inputs, labels): BERT's corruption of a `rate` share of the non-special tokens.
    labels hold the original id where a token was chosen and IGNORE elsewhere. Uses the global RNG."""
    maskable = torch.ones_like(ids, dtype=torch.bool)
    for s in special_ids:
        maskable &= ids.ne(s)
    chosen = maskable & (torch.rand(ids.shape, device=ids.device) < rate)
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    roll = torch.rand(ids.shape, device=ids.device)
    inputs = torch.where(chosen & (roll < 0.8), torch.full_like(ids, mask_id), ids)
    random_ids = torch.randint(vocab_size, ids.shape, device=ids.device)
    inputs = torch.where(chosen & (roll >= 0.8) & (roll < 0.9), random_ids, inputs)
    return inputs, labels


def mlm_logits(transformer, inputs, labels, pad_id, target_slot=False):
    """A bidirectional pass -> (fp32 logits of the chosen tokens (N, V), their labels (N,)). target_slot
    puts the sentence at positions maxlen + t with segment 1 (where UniVAE's target half sits)."""
    B, T = inputs.shape
    offset = transformer.config.maxlen if target_slot else 0
    positions = torch.arange(offset, offset + T, device=inputs.device)
    token_type_ids = torch.full_like(inputs, int(target_slot))
    h = transformer(inputs, token_type_ids, attention_mask=inputs.ne(pad_id), positions=positions)
    chosen = labels.ne(IGNORE)
    logits = transformer.logits(h[chosen])  # only the chosen rows: the vocab projection is the big matmul
    return logits.float(), labels[chosen]


def mlm_loss(transformer, inputs, labels, pad_id, target_slot=False):
    """Mean CE over the chosen tokens of a bidirectional pass -> (loss, n_chosen)."""
    logits, targets = mlm_logits(transformer, inputs, labels, pad_id, target_slot)
    n = torch.tensor(len(targets), device=logits.device)
    loss = F.cross_entropy(logits, targets, reduction="sum") / n.clamp_min(1)
    return loss, n
