"""The evaluation protocols, one module each behind one interface (:class:`Protocol`, base.py),
chosen by the table's ``protocol`` name:

- ``supervised``: the shared supervised recipe (supervised.py)
- ``contrastive``: SimCLR without labels, then a linear probe (contrastive.py)
- ``detection``: detectors score a half-poisoned split, the table shows their AUROC (detection.py)

A new protocol is a module here with one :class:`Protocol` subclass, listed in
:data:`PROTOCOLS`; the core (context, cell, plan, leaderboard) asks it, never its name.
"""
from __future__ import annotations

from uebench.protocols.base import Protocol
from uebench.protocols.contrastive import Contrastive
from uebench.protocols.detection import Detection
from uebench.protocols.supervised import Supervised

PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (Supervised(), Contrastive(), Detection())}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; ValueError naming the known ones otherwise."""
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}") from None


__all__ = ["PROTOCOLS", "Contrastive", "Detection", "Protocol", "Supervised", "get_protocol"]
