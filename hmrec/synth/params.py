"""Tunable constants of the generator, and the named profiles that override them.

:class:`Params` holds every constant that shapes the data; its defaults are
the ``default`` profile. A profile (:data:`PROFILES`) is a set of overrides
of these and of a few ``generate.*`` settings; ``hmrec generate --profile
NAME`` picks one. planted/segments.json records the parameters it has always
recorded; planted/profile.json records the profile and all of them.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from hmrec.config import GenerateConfig
from hmrec.errors import HmrecError
from hmrec.synth.vocab import DISCOUNTS, PRICE_DIVISOR

# Mean weights of a segment's three clusters; each customer's are drawn around them.
CLUSTER_WEIGHTS = (0.40, 0.35, 0.25)


@dataclass(frozen=True)
class Params:
    """The generator's tuning constants; the defaults give the ``default`` profile."""

    cluster_weight_concentration: float = 8.0  # Dirichlet around the segment's weights, per customer
    age_in_band: float = 0.85  # share of a segment's customers whose age lies in its band
    zipf_exponent: float = 1.0  # popularity ~ rank^-s within a cluster
    evergreen_share: float = 0.10  # products sold throughout, at this level of a new launch's peak:
    evergreen_level: float = 0.30
    launch_before_days: int = 180  # non-evergreen launches spread from this long before the start
    ramp_days: tuple[int, int] = (5, 20)  # days from launch to peak sales (uniform)
    decay_days: tuple[float, float] = (30, 90)  # e-folding time of sales after the peak (uniform)
    life_floor: float = 0.02  # sales level an article keeps after its decay
    colour_noise: float = 0.15  # chance an article's colour is not from its cluster's palette
    appearance_noise: float = 0.15
    variant_p: float = 0.55  # colour variants per product ~ Geometric(p), at most 10
    history_size: int = 24  # last articles per customer kept; a new purchase avoids them
    repeat_from_last: int = 8  # a re-buy is one of the last this many articles
    repeat_recency_power: float = 1.5  # > 1 favours the most recent of them
    exclude_retries: int = 3  # redraws of a new purchase that hit the history, then one uniform draw
    new_visit_prob: float = 0.4  # chance that a customer's next item of the month starts a new visit
    same_day_duplicate: float = 0.03  # chance an item repeats the previous item of the visit
    online_share_beta: tuple[float, float] = (2.2, 1.0)  # per-customer share of channel 2
    activity_sigma: float = 1.1  # lognormal spread of purchase rates
    fn_activity: float = 1.25  # FN=1.0 customers buy this much more
    joined_before_share: float = 0.55  # customers already active on the first day
    lifetime_days: tuple[int, int] = (60, 700)  # active period: minimum + exponential mean
    weekday_weights: tuple[float, ...] = (0.92, 0.90, 0.95, 1.0, 1.08, 1.15, 1.0)  # Monday first
    yearly_amplitude: float = 0.12
    yearly_peak_doy: int = 170
    trend: tuple[float, float] = (0.7, 1.3)  # daily volume grows linearly from the first to the last day
    markdown: tuple[float, float, float] = (0.08, 0.45, 120.0)  # P(discount) = a + b * (1 - exp(-age / c))
    price_sigma: float = 0.35  # lognormal spread of article prices around the cluster's
    customers_per_postal_code: int = 4
    default_postal_share: float = 0.08  # customers sharing one postal code, as in the Kaggle file
    empty_desc_share: float = 0.004
    empty_age_share: float = 0.011
    # Sizes per unit of scale, relative to the Kaggle data set's (articles,
    # transactions), and the floor of transactions per customer at small scales.
    article_factor: float = 1.0
    transaction_factor: float = 1.0
    min_transactions_per_customer: int = 10
    # Redraws from the whole catalogue after exclude_retries in the purchase's
    # own range, before the uniform draw.
    explore_retries: int = 0
    # Whether a new purchase also avoids the customer's other articles of the
    # same day; off by default, where two draws of a day may coincide.
    exclude_same_day: bool = False


# planted/segments.json's "params" keys, in its order: the file keeps the
# layout it had before profiles existed, so that default data sets stay
# byte-identical. The three constants among them are not tunable.
_SEGMENTS_JSON_KEYS = (
    "cluster_weights", "cluster_weight_concentration", "age_in_band", "zipf_exponent", "evergreen_share",
    "evergreen_level", "launch_before_days", "ramp_days", "decay_days", "life_floor", "colour_noise",
    "appearance_noise", "variant_p", "history_size", "repeat_from_last", "repeat_recency_power", "exclude_retries",
    "new_visit_prob", "same_day_duplicate", "online_share_beta", "activity_sigma", "fn_activity",
    "joined_before_share", "lifetime_days", "weekday_weights", "yearly_amplitude", "yearly_peak_doy", "trend",
    "markdown", "discounts", "price_sigma", "price_divisor", "customers_per_postal_code", "default_postal_share",
    "empty_desc_share", "empty_age_share",
)


def record(p: Params) -> dict[str, object]:
    """Every parameter as JSON values (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(p).items()}


def segments_json_params(p: Params) -> dict[str, object]:
    """The parameters planted/segments.json has always listed, in its order."""
    values = {**record(p), "cluster_weights": list(CLUSTER_WEIGHTS), "discounts": DISCOUNTS.tolist(),
              "price_divisor": PRICE_DIVISOR}
    return {k: values[k] for k in _SEGMENTS_JSON_KEYS}


# The generate.* settings a profile may set; the others (scale, seed, dates,
# chunk_rows) say how much is generated and where, not its shape.
PROFILE_SETTINGS = ("repeat_share", "explore_share", "never_buy_share", "min_articles", "min_customers")

# name -> overrides of Params fields and of PROFILE_SETTINGS. docs/DATA.md
# describes each and what a recommender should find in it.
PROFILES: dict[str, dict[str, object]] = {
    "default": {},
    # An article is almost never bought twice by one customer.
    "no-repeat": {
        "repeat_share": 0.0,
        "same_day_duplicate": 0.0,
        # New purchases avoid (nearly) everything a customer bought: the
        # 384 latest cover all but the heaviest buyers, also the same day's.
        "history_size": 384,
        "exclude_same_day": True,
        # A heavy buyer who has exhausted their clusters looks elsewhere
        # rather than buying an old article again.
        "explore_retries": 5,
    },
    # What sells is what arrived in the last weeks; taste is weak.
    "trend": {
        "explore_share": 0.6,
        "repeat_share": 0.05,
        # Sales peak within days of launch and fade within two weeks, with
        # almost nothing left after: each week's new arrivals take the sales.
        "ramp_days": (1, 5),
        "decay_days": (5, 15),
        "life_floor": 0.001,
        "evergreen_share": 0.0,  # one evergreen product per cluster remains, so each has something on sale
        "evergreen_level": 0.05,
    },
    # Few purchases per customer; most customers have none or one.
    "sparse": {
        "never_buy_share": 0.35,
        "transaction_factor": 0.1,
        "min_transactions_per_customer": 1,
        # A first visit has nothing to re-buy, and here it holds most
        # purchases: 0.09 overall keeps the default's chance per later
        # purchase (about 0.19), where 0.17 would make most of them re-buys.
        "repeat_share": 0.09,
    },
    # Six times the articles per customer, each sold rarely.
    "big-catalogue": {
        "article_factor": 6.0,
        "zipf_exponent": 0.7,  # flatter popularity inside a cluster: no few best sellers take the sales
    },
}


def resolve_profile(name: str, g: GenerateConfig) -> tuple[GenerateConfig, Params]:
    """The settings and parameters of profile ``name``: its overrides over ``g`` and the defaults."""
    if name not in PROFILES:
        raise HmrecError(f"unknown profile '{name}'; the profiles are: {', '.join(PROFILES)}")
    over = PROFILES[name]
    settings = {k: v for k, v in over.items() if k in PROFILE_SETTINGS}
    params = {k: v for k, v in over.items() if k not in PROFILE_SETTINGS}
    return dataclasses.replace(g, **settings), Params(**params)
