"""What an interrupted rollout leaves behind: traffic split between two versions of a model."""

from __future__ import annotations

from typing import NamedTuple

from cvdeploy.platforms.base import EndpointInfo

__all__ = ["SplitState", "find_interrupted"]


class SplitState(NamedTuple):
    """An endpoint's traffic split between two versions of one model."""

    champion: str
    candidate: str
    percent: int  # the candidate's share


def find_interrupted(info: EndpointInfo, model: str) -> SplitState | None:
    """The split a killed rollout left: two versions of ``model`` share the traffic.

    The champion is the version with the larger share (the first listed on a tie, as
    :func:`next_config` lists the receiver first). None when the endpoint is not split that way.
    """
    if info.config is None:
        return None
    by_name = {e.name: e for e in info.config.served_entities}
    live = [r for r in info.config.routes if r.traffic_percentage > 0]
    if len(live) != 2:
        return None
    entities = [by_name[r.served_model_name] for r in live]
    if any(e.entity_name != model for e in entities):
        return None
    order = sorted(range(2), key=lambda i: -live[i].traffic_percentage)
    champ, cand = (entities[i] for i in order)
    return SplitState(champ.entity_version, cand.entity_version, live[order[1]].traffic_percentage)
