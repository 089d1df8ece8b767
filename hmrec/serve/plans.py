"""How each group of customers' lists are made: the plan a scoring run follows.

Customers fall in three history groups at the cutoff (:data:`hmrec.etl.segments.HISTORY_GROUPS`):
cold, lapsed and active. Each group's lists follow one :class:`ListPlan`:

- ``model``: the two-tower model's nearest articles, with up to ``slots`` of
  the customer's recent purchases, leading the list (``order: recency``) or
  ranked among the model's items by its score (``order: model``); the
  ``fallback`` popularity list fills what is left;
- ``repurchase``: up to ``slots`` of the customer's recent purchases, latest
  first, then the ``fallback`` list (no model);
- ``popular``: the ``fallback`` popularity list alone: the customer's age
  segment's (``segment``, then the global list) or the global one.

The settings ``score.repurchase_slots``, ``score.repurchase_order`` and
``score.fallback`` either pin a value for every group or say ``auto``: then
:mod:`hmrec.evaluation.choose` picks each group's plan from :func:`options`
on the validation week and scoring follows the recorded choice. Cold customers
have no history for the model to read, so their plans are always popular.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from hmrec.config import AUTO, Config
from hmrec.etl.segments import HISTORY_GROUPS

SLOT_CHOICES = (0, 2, 4, 6, 8, 12)
ORDERS = ("recency", "model")
FALLBACKS = ("segment", "global")
# What an auto setting means when nothing could be chosen (no validation week):
# the values the served lists used before they were chosen per as-of.
UNCHOSEN = {"slots": 6, "order": "recency", "fallback": "segment"}


@dataclass(frozen=True)
class ListPlan:
    """The recipe of one group's lists."""

    source: str  # model | repurchase | popular
    slots: int = 0  # recent purchases kept in the list (model only)
    order: str = "recency"  # recency: they lead; model: ranked by the model's score
    fallback: str = "segment"  # segment: the age segment's popularity list, then the global one; global

    def label(self) -> str:
        """A short name, e.g. ``model+6 recency`` or ``popular segment``."""
        if self.source == "popular":
            return f"popular {self.fallback}"
        if self.source == "repurchase":
            return f"repurchase+{self.slots} then popular {self.fallback}"
        if self.slots == 0:
            return "model"
        return f"model+{self.slots} {self.order}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ListPlan":
        return cls(source=d["source"], slots=int(d.get("slots", 0)), order=d.get("order", "recency"),
                   fallback=d.get("fallback", "segment"))


Plans = dict[str, ListPlan]  # history group -> plan


def _pinned(cfg: Config) -> dict[str, object]:
    """The settings that pin a value (not auto)."""
    sc = cfg.score
    out: dict[str, object] = {}
    if not sc.repurchase:
        out["slots"] = 0
    elif sc.repurchase_slots != AUTO:
        out["slots"] = min(int(sc.repurchase_slots), sc.k)
    if sc.repurchase_order != AUTO:
        out["order"] = sc.repurchase_order
    if sc.fallback != AUTO:
        out["fallback"] = sc.fallback
    return out


def is_auto(cfg: Config) -> bool:
    """Whether any list setting is chosen on the validation week."""
    sc = cfg.score
    return sc.repurchase and sc.repurchase_slots == AUTO or sc.repurchase_order == AUTO or sc.fallback == AUTO


def options(cfg: Config) -> dict[str, list[ListPlan]]:
    """Every group's candidate plans, honouring the pinned settings; the first is the simplest."""
    pins = _pinned(cfg)
    fallbacks = [pins["fallback"]] if "fallback" in pins else list(FALLBACKS)
    slots = [pins["slots"]] if "slots" in pins else [s for s in SLOT_CHOICES if s <= cfg.score.k]
    orders = [pins["order"]] if "order" in pins else list(ORDERS)
    popular = [ListPlan("popular", fallback=f) for f in fallbacks]
    repurchase = [] if pins.get("slots") == 0 else [ListPlan("repurchase", slots=cfg.score.k, fallback=f) for f in fallbacks]
    # the model's lists are filled from the segment list unless pinned: short lists are rare
    fill = pins.get("fallback", "segment")
    model = []
    for s in slots:
        for o in (orders if s > 0 else orders[:1]):
            model.append(ListPlan("model", slots=s, order=o, fallback=fill))
    out = {group: popular + repurchase + model for group in HISTORY_GROUPS}
    out["cold"] = popular
    return out


def unchosen(cfg: Config) -> Plans:
    """The plans when nothing was chosen: pinned settings, and :data:`UNCHOSEN` for the auto ones."""
    v = {**UNCHOSEN, **_pinned(cfg)}
    model = ListPlan("model", slots=int(v["slots"]), order=str(v["order"]), fallback=str(v["fallback"]))
    return {"cold": ListPlan("popular", fallback=str(v["fallback"])), "lapsed": model, "active": model}


def plans_to_json(plans: Plans) -> dict:
    return {group: plan.to_dict() for group, plan in plans.items()}


def plans_from_json(data: dict) -> Plans:
    return {group: ListPlan.from_dict(d) for group, d in data.items()}
