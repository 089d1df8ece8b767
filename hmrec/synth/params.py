"""Tuning constants of the generator, all recorded in planted/segments.json."""
from __future__ import annotations

from hmrec.synth.vocab import DISCOUNTS, PRICE_DIVISOR

# Mean weights of a segment's three clusters; each customer's are drawn around them.
CLUSTER_WEIGHTS = (0.40, 0.35, 0.25)

PARAMS: dict[str, object] = {
    "cluster_weights": list(CLUSTER_WEIGHTS),
    "cluster_weight_concentration": 8.0,  # Dirichlet around the segment's weights, per customer
    "age_in_band": 0.85,  # share of a segment's customers whose age lies in its band
    "zipf_exponent": 1.0,  # popularity ~ rank^-s within a cluster
    "evergreen_share": 0.10,  # products sold throughout, at this level of a new launch's peak:
    "evergreen_level": 0.30,
    "launch_before_days": 180,  # non-evergreen launches spread from this long before the start
    "ramp_days": [5, 20],  # days from launch to peak sales (uniform)
    "decay_days": [30, 90],  # e-folding time of sales after the peak (uniform)
    "life_floor": 0.02,  # sales level an article keeps after its decay
    "colour_noise": 0.15,  # chance an article's colour is not from its cluster's palette
    "appearance_noise": 0.15,
    "variant_p": 0.55,  # colour variants per product ~ Geometric(p), at most 10
    "history_size": 24,  # last articles per customer kept; a new purchase avoids them
    "repeat_from_last": 8,  # a re-buy is one of the last this many articles
    "repeat_recency_power": 1.5,  # > 1 favours the most recent of them
    "exclude_retries": 3,  # redraws of a new purchase that hit the history, then one uniform draw
    "new_visit_prob": 0.4,  # chance that a customer's next item of the month starts a new visit
    "same_day_duplicate": 0.03,  # chance an item repeats the previous item of the visit
    "online_share_beta": [2.2, 1.0],  # per-customer share of channel 2
    "activity_sigma": 1.1,  # lognormal spread of purchase rates
    "fn_activity": 1.25,  # FN=1.0 customers buy this much more
    "joined_before_share": 0.55,  # customers already active on the first day
    "lifetime_days": [60, 700],  # active period: minimum + exponential mean
    "weekday_weights": [0.92, 0.90, 0.95, 1.0, 1.08, 1.15, 1.0],  # Monday first
    "yearly_amplitude": 0.12,
    "yearly_peak_doy": 170,
    "trend": [0.7, 1.3],  # daily volume grows linearly from the first to the last day
    "markdown": [0.08, 0.45, 120.0],  # P(discount) = a + b * (1 - exp(-age / c))
    "discounts": DISCOUNTS.tolist(),
    "price_sigma": 0.35,  # lognormal spread of article prices around the cluster's
    "price_divisor": PRICE_DIVISOR,
    "customers_per_postal_code": 4,
    "default_postal_share": 0.08,  # customers sharing one postal code, as in the Kaggle file
    "empty_desc_share": 0.004,
    "empty_age_share": 0.011,
}
