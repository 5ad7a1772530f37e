"""Pricing: what a call used, what it may cost at worst, and what it cost.

``usage`` reads any provider's usage report; ``prices`` resolves a model's prices from
genai-prices or the config's overrides; ``worst_case`` bounds a request before it is sent;
``images`` sizes image inputs.
"""

from agentguard.pricing.prices import CacheWrites, ModelPrice, Pricer, default_pricer
from agentguard.pricing.usage import Usage

__all__ = ["CacheWrites", "ModelPrice", "Pricer", "Usage", "default_pricer"]
