"""Attribution-matching losses, registered by name; each is a ``torch.nn.Module`` whose
``Options`` dataclass declares its settings."""

from .losses import (MATCHERS, WCAM, AttentionTransfer, AttributionMatcher, LRPMatching,
                     LRPOptions, MatchingLoss, NoOptions, WCAMOptions, create_matcher, drop_mask,
                     matcher_options, normalized_distance)

__all__ = ["MATCHERS", "WCAM", "AttentionTransfer", "AttributionMatcher", "LRPMatching",
           "LRPOptions", "MatchingLoss", "NoOptions", "WCAMOptions", "create_matcher",
           "drop_mask", "matcher_options", "normalized_distance"]
