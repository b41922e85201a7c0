"""The training loss of one micro-batch: cross-entropy, plus R-Drop's consistency term when optim.rdrop_alpha > 0.

R-Drop (Liang et al. 2021, "R-Drop: Regularized Dropout for Neural Networks"): the batch goes through the model
twice with different dropout masks, and the loss is the mean cross-entropy of both passes plus alpha times the
symmetric KL divergence between their predicted distributions, 0.5 * (KL(P1 || P2) + KL(P2 || P1)). It pulls the
sub-networks that dropout samples towards one prediction; it adds no parameter, and costs a second forward and
backward.

Both passes are one forward of the batch followed by itself: one matmul per layer at twice the rows instead of two
calls. Every dropout here (torch's, `runtime.fastdropout`'s, peft's lora_dropout, SDPA's attention dropout) draws
an independent mask per element of the tensor it is given, so the two copies get different masks. With a cached
frozen prefix, both copies start from the same stored states (those layers run without dropout anyway) and differ
by the dropout of the layers above: the ones that train.

The KL is summed over classes and averaged over examples (the reference code sums over the batch too, which makes
alpha depend on the batch size), and computed in fp32 from log-probabilities, which stays finite where a
probability underflows.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime.fastdropout import FastDropout


def doubled(batch: dict) -> dict:
    """The batch followed by itself along the batch axis: token ids or cached states, mask, labels; anything that
    is not a tensor (a cached batch's `start_layer`) as it is."""
    return {k: torch.cat([v, v]) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def symmetric_kl(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """0.5 * (KL(P1 || P2) + KL(P2 || P1)) per example, averaged over the examples; inputs are logits."""
    log_p, log_q = F.log_softmax(first.float(), dim=-1), F.log_softmax(second.float(), dim=-1)
    # kl_div(input, target) is KL(target || input-distribution)
    p_q = F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)
    q_p = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)
    return 0.5 * (p_q + q_p).mean()


def training_loss(model, batch: dict, *, forward, device: torch.device, weight: torch.Tensor | None,
                  label_smoothing: float, rdrop_alpha: float,
                  regulariser: Callable[[], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the loss to backpropagate, R-Drop's KL term detached or None when R-Drop is off). `forward(model, batch,
    device)` gives the logits (runtime.forward.forward_logits); `regulariser()`, the adapter method's own term
    (AdaLoRA's orthogonality), is added when given."""
    labels = batch["labels"].to(device)
    if not rdrop_alpha:
        logits = forward(model, batch, device)
        loss, kl = F.cross_entropy(logits.float(), labels, weight=weight, label_smoothing=label_smoothing), None
    else:
        logits = forward(model, doubled(batch), device).float()
        # One cross-entropy over both copies is the mean of the two passes' (each copy has the same weight sum).
        ce = F.cross_entropy(logits, torch.cat([labels, labels]), weight=weight, label_smoothing=label_smoothing)
        kl = symmetric_kl(*logits.chunk(2))
        loss, kl = ce + rdrop_alpha * kl, kl.detach()
    return (loss if regulariser is None else loss + regulariser()), kl


def warn_without_dropout(rdrop_alpha: float, model: nn.Module, inner: nn.Module | None, prefix: int, say) -> None:
    """R-Drop with no dropout in the layers that run per step makes both passes equal: its KL term is then 0 and
    the second pass costs compute for nothing. Said once, at setup; not an error (a deliberate control run)."""
    if not rdrop_alpha:
        return
    cached = set()
    if prefix and inner is not None:  # the cached layers run once, in eval mode: their dropout never acts
        cached = {id(m) for part in (inner.embeddings, *inner.encoder.layer[:prefix]) for m in part.modules()}
    if not any(isinstance(m, (nn.Dropout, FastDropout)) and m.p > 0 and id(m) not in cached
               for m in model.modules()):
        say("warning: optim.rdrop_alpha is set but no dropout acts in the layers that train (adapter.dropout and "
            "the encoder's are 0): both passes agree and R-Drop only doubles the cost")
