"""Attribution-matching losses, registered by name; each is a ``torch.nn.Module``."""

from .losses import (MATCHERS, WCAM, AttentionTransfer, AttributionMatcher, LRPMatching,
                     MatchingLoss, create_matcher, drop_mask, normalized_distance)

__all__ = ["MATCHERS", "WCAM", "AttentionTransfer", "AttributionMatcher", "LRPMatching",
           "MatchingLoss", "create_matcher", "drop_mask", "normalized_distance"]
