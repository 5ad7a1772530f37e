"""Parking sessions on limits and resuming them when the limit resets."""

from agentguard.parking.classify import BUILTIN_RULES, LimitVerdict, classify_limit_error
from agentguard.parking.record import SCHEMA_VERSION, ParkedSession, ParkReason, json_schema
from agentguard.parking.store import ParkedStore, UnknownSession

__all__ = [
    "BUILTIN_RULES",
    "SCHEMA_VERSION",
    "LimitVerdict",
    "ParkReason",
    "ParkedSession",
    "ParkedStore",
    "UnknownSession",
    "classify_limit_error",
    "json_schema",
]
