"""Layout guidance: cross-attention guidance on the edit rows' latents (pix2pix-zero, Parmar et al. 2023).

Prompt-to-Prompt holds an edit's layout by injecting the source's attention maps inside its windows, but the
injected maps do not say where the shape's outline lies within a latent cell: after the self-attention window
the edit row redraws its shape from its own latent, and on the toy world's 16 x 16 latents a recoloured shape
grows, shrinks or turns back upright (benchmarks/RESULTS.md, issue 21). Guidance acts on the latent itself:
after each sampling step in the first `until` of the steps, every target row takes one gradient step that
brings its own cross-attention maps (computed without injection, at maps of at most `max_tokens` queries)
towards the source row's at the same point, mapped onto the target's tokens as P2P maps them. Only the prompt's
words count: the start token takes most of the attention everywhere, and the end token and padding are
rewritten by a changed word in a causal text encoder.

Each guided step costs one more UNet call of the source rows and one forward and backward of the target rows.
"""
from __future__ import annotations

import torch

from attention.controllers import AttentionStore, PromptToPrompt
from attention.processors import attention_control
from editing.core.errors import UserError


class CrossMaps(AttentionStore):
    """Collects one UNet call's cross-attention maps (mean over heads, (B, Q, L) per layer), gradients kept."""

    def __init__(self, max_tokens: int):
        super().__init__(n_prompts=1, max_tokens=max_tokens)
        self.maps: list[torch.Tensor] = []

    def wants(self, is_cross: bool, queries: int, step: int) -> bool:
        return is_cross and queries <= self.max_tokens

    def edit(self, probs: torch.Tensor, *, is_cross: bool, place: str, step: int, heads: int) -> torch.Tensor:
        self.maps.append(probs.view(-1, heads, *probs.shape[1:]).float().mean(1))
        return probs


def cross_maps(model, x: torch.Tensor, t, cond: torch.Tensor, step: int, max_tokens: int) -> list[torch.Tensor]:
    """The cross-attention maps of one conditional UNet call on x (no guidance, no injection)."""
    store = CrossMaps(max_tokens)
    with attention_control(model.unet, store):
        model.unet_output(x, t, cond, {"step": step})
    return store.maps


def word_weights(controller: PromptToPrompt, prompts: list[str], tokenizer) -> torch.Tensor:
    """(n_targets, L): 1 at each target's word tokens that have a source token to follow, else 0."""
    length = tokenizer.model_max_length
    weights = torch.zeros(len(prompts) - 1, length)
    for k, target in enumerate(prompts[1:]):
        n = min(len(tokenizer(target).input_ids), length)  # start token, words, end token
        weights[k, 1:n - 1] = 1.0
    if controller.mode == "refine":  # an inserted word has no source map to follow
        weights = weights * controller.refine_alphas
    return weights


class LayoutGuidance:
    """The sampling loop's callback that guides rows 1.. (the targets) by row 0's cross-attention maps."""

    def __init__(self, model, controller: PromptToPrompt, prompts: list[str], conditioning, timesteps,
                 scale: float, until: float, max_tokens: int):
        self.model = model
        self.controller = controller
        self.conditioning = conditioning
        self.timesteps = list(timesteps)
        self.scale = scale
        self.last = int(until * len(self.timesteps))  # guide the latents that enter steps 1 .. last - 1
        self.max_tokens = max_tokens
        self.weights = word_weights(controller, prompts, model.tokenizer)

    def reference(self, maps: torch.Tensor) -> torch.Tensor:
        """The source's maps (Q, L) on each target's tokens: (n_targets, Q, L), as P2P maps them."""
        return self.controller.onto_targets(maps)

    @torch.enable_grad()
    def __call__(self, i: int, x: torch.Tensor) -> torch.Tensor | None:
        step = i + 1  # x is the latent that enters this step
        if self.scale == 0 or step >= self.last:
            return None
        t = self.timesteps[step]
        cond, _ = self.conditioning.at(step)
        with torch.no_grad():
            refs = [self.reference(m[0]) for m in cross_maps(self.model, x[:1], t, cond[:1], step, self.max_tokens)]
        targets = x[1:].detach().clone().requires_grad_(True)
        maps = cross_maps(self.model, targets, t, cond[1:], step, self.max_tokens)
        if not maps:
            raise UserError(f"layout guidance found no cross-attention maps of at most {self.max_tokens} queries "
                            "in this UNet: it cannot guide this model")
        weights = self.weights.to(x.device)[:, None, :]  # (n_t, 1, L)
        loss = sum((weights * (m - r) ** 2).sum() for m, r in zip(maps, refs))
        grad, = torch.autograd.grad(loss, targets)
        return torch.cat([x[:1], targets.detach() - self.scale * grad])
