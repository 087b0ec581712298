"""A sixth variant defined outside latentvla, in one file, as a user would write it
(`latentvla train --strategy_modules sixth_variant --vla_id la_first_code`; tests/test_strategy_registry.py):
P `<|latent_query|>` slots that the head reads, each classifying the first image-LAM code of its step."""

from __future__ import annotations

from latentvla.vla.strategies import Strategy, code_cross_entropy, register_strategy


@register_strategy("la_first_code")
class FirstCodeStrategy(Strategy):
    required_sample_keys = ("latent_idx",)
    options = ("token_loss_weight",)
    predicts_codes = True

    def slot_ids(self):
        return [self.ids.latent_query] * self.P

    def head_query_states(self, ctx):
        return [ctx.gather(i, self.ids.latent_query, self.P) for i in ctx.head_layer_indexes]

    def code_slots_spec(self):
        return self.ids.latent_query, self.P, self.ids.act

    def aux_loss(self, ctx):
        first = ctx.batch["latent_idx"][:, :, 0]  # [B, P]
        ce, metrics = code_cross_entropy(ctx, self.ids.latent_query, self.ids.act, first, self.step_valid(ctx))
        return self.cfg.token_loss_weight * ce, metrics
