"""The event-driven simulator: every spike delivered in time order, independently of the tensor forward."""

from .events import EventNetwork, EventResult, event_network, simulate

__all__ = ["EventNetwork", "EventResult", "event_network", "simulate"]
