"""Synthetic data in the H&M Kaggle schema, with structure planted for a model to find.

``hmrec generate --out DIR`` writes ``articles.csv``, ``customers.csv`` and
``transactions_train.csv`` exactly as the Kaggle files are laid out, plus the
ground truth in ``DIR/planted/``. docs/DATA.md describes the formats and the
planted structure; the short version:

* 30 style clusters of articles, each tied to an index, sections, product
  types, a colour palette and print styles, so the cluster shows in the
  attributes and not only in the ids;
* 12 customer taste segments, three per age band, each buying mostly from
  three clusters: per-age popularity cannot tell the segments of a band apart;
* articles launch over the two years and sell for a few months (rise, then
  decay), with Zipf popularity inside a cluster, so recent sales matter;
* repeat purchases from a ring of each customer's recent articles, heavy-tailed
  purchase counts, active periods, customers who never buy, per-customer
  online share, per-article prices with markdowns.

Everything is vectorised numpy. Transactions are simulated day by day (a
customer's repeat purchases depend on what they bought before) and written one
calendar month at a time, so memory stays bounded at full scale. Every file is
written as ``<name>.tmp`` and renamed only when all of them are complete.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from hmrec.config import Config, GenerateConfig
from hmrec.errors import HmrecError
from hmrec.progress import log, stage
from hmrec.lake.schemas import ARTICLE_COLUMNS, CUSTOMER_COLUMNS, TRANSACTION_COLUMNS

STAGE = "generate"
OUTPUT_FILES = ("articles.csv", "customers.csv", "transactions_train.csv", "planted/customer_segments.csv",
                "planted/article_clusters.csv", "planted/segments.json")

# The Kaggle data set's sizes: scale 1.0.
FULL_ARTICLES = 105_542
FULL_CUSTOMERS = 1_371_980
FULL_TRANSACTIONS = 31_788_324
# Product codes have six digits (article_id = product_code * 1000 + variant),
# which bounds the catalogue, and with it the scale.
MAX_SCALE = 10.0
PRODUCT_CODE_RANGE = (108_775, 999_999)

# ---- vocabularies (names as in the Kaggle articles.csv) ----------------------

# index_code -> (index_name, index_group_no, index_group_name). The Kaggle file
# codes Sport 'S'; here it is 'E' so that every index code is a letter A..J.
INDEXES: dict[str, tuple[str, int, str]] = {
    "A": ("Ladieswear", 1, "Ladieswear"),
    "B": ("Lingeries/Tights", 1, "Ladieswear"),
    "C": ("Ladies Accessories", 1, "Ladieswear"),
    "D": ("Divided", 2, "Divided"),
    "E": ("Sport", 26, "Sport"),
    "F": ("Menswear", 3, "Menswear"),
    "G": ("Baby Sizes 50-98", 4, "Baby/Children"),
    "H": ("Children Sizes 92-140", 4, "Baby/Children"),
    "I": ("Children Sizes 134-170", 4, "Baby/Children"),
    "J": ("Children Accessories, Swimwear", 4, "Baby/Children"),
}

# section_name -> (section_no, prefix of its department names)
SECTIONS: dict[str, tuple[int, str]] = {
    "Womens Everyday Collection": (16, ""),
    "Womens Everyday Basics": (15, "Basic"),
    "Womens Tailoring": (11, "Tailoring"),
    "Womens Casual": (6, "Casual"),
    "Womens Lingerie": (61, "Lingerie"),
    "Womens Nightwear, Socks & Tigh": (62, "Nightwear"),
    "Womens Swimwear, beachwear": (60, "Swim"),
    "Womens Small accessories": (66, "Small Acc"),
    "Womens Big accessories": (65, "Big Acc"),
    "Womens Shoes": (64, "Shoes"),
    "Divided Collection": (53, "Divided"),
    "Divided Basics": (52, "Divided Basic"),
    "Divided Accessories": (56, "Divided Acc"),
    "Ladies H&M Sport": (5, "Ladies Sport"),
    "Men H&M Sport": (57, "Men Sport"),
    "Contemporary Street": (22, "Men Street"),
    "Contemporary Casual": (21, "Men Casual"),
    "Contemporary Smart": (20, "Men Smart"),
    "Mens Outerwear": (27, "Men Outdoor"),
    "Men Underwear": (23, "Men Underwear"),
    "Men Accessories": (25, "Men Acc"),
    "Men Shoes": (26, "Men Shoes"),
    "Baby Essentials & Complements": (41, "Baby Essentials"),
    "Baby Boy": (42, "Baby Boy"),
    "Baby Girl": (43, "Baby Girl"),
    "Kids Girl": (44, "Kids Girl"),
    "Kids Boy": (45, "Kids Boy"),
    "Young Girl": (47, "Young Girl"),
    "Young Boy": (48, "Young Boy"),
    "Kids Accessories, Swimwear & D": (49, "Kids Acc"),
    "Kids & Baby Shoes": (74, "Kids Shoes"),
}

# product_type_name -> (product_type_no, product_group_name)
PRODUCT_TYPES: dict[str, tuple[int, str]] = {
    "Vest top": (253, "Garment Upper body"),
    "T-shirt": (255, "Garment Upper body"),
    "Top": (254, "Garment Upper body"),
    "Blouse": (258, "Garment Upper body"),
    "Shirt": (259, "Garment Upper body"),
    "Sweater": (252, "Garment Upper body"),
    "Cardigan": (245, "Garment Upper body"),
    "Hoodie": (308, "Garment Upper body"),
    "Jacket": (264, "Garment Upper body"),
    "Coat": (262, "Garment Upper body"),
    "Blazer": (301, "Garment Upper body"),
    "Bodysuit": (267, "Garment Upper body"),
    "Trousers": (272, "Garment Lower body"),
    "Shorts": (274, "Garment Lower body"),
    "Skirt": (275, "Garment Lower body"),
    "Leggings/Tights": (273, "Garment Lower body"),
    "Dress": (265, "Garment Full body"),
    "Jumpsuit/Playsuit": (268, "Garment Full body"),
    "Garment Set": (270, "Garment Full body"),
    "Dungarees": (271, "Garment Full body"),
    "Bra": (306, "Underwear"),
    "Underwear bottom": (286, "Underwear"),
    "Underwear Tights": (304, "Socks & Tights"),
    "Socks": (302, "Socks & Tights"),
    "Pyjama set": (298, "Nightwear"),
    "Bikini top": (57, "Swimwear"),
    "Swimwear bottom": (59, "Swimwear"),
    "Swimsuit": (58, "Swimwear"),
    "Sneakers": (93, "Shoes"),
    "Boots": (88, "Shoes"),
    "Sandals": (91, "Shoes"),
    "Ballerinas": (95, "Shoes"),
    "Earring": (72, "Accessories"),
    "Hair clip": (78, "Accessories"),
    "Bag": (66, "Accessories"),
    "Scarf": (77, "Accessories"),
    "Hat/beanie": (76, "Accessories"),
    "Belt": (68, "Accessories"),
    "Sunglasses": (73, "Accessories"),
    "Necklace": (74, "Accessories"),
}

GARMENT_GROUPS: dict[str, int] = {
    "Jersey Basic": 1002,
    "Knitwear": 1003,
    "Jersey Fancy": 1005,
    "Woven/Jersey/Knitted mix Baby": 1006,
    "Outdoor": 1007,
    "Dressed": 1008,
    "Trousers": 1009,
    "Blouses": 1010,
    "Shirts": 1011,
    "Skirts": 1012,
    "Dresses Ladies": 1013,
    "Dresses/Skirts girls": 1014,
    "Trousers Denim": 1016,
    "Under-, Nightwear": 1017,
    "Swimwear": 1018,
    "Accessories": 1019,
    "Shoes": 1020,
    "Socks and Tights": 1021,
    "Shorts": 1025,
}

PERCEIVED_VALUES: dict[str, int] = {
    "Dusty Light": 1, "Dark": 2, "Bright": 3, "Light": 4, "Medium Dusty": 5, "Medium": 6,
}
PERCEIVED_MASTERS: dict[str, int] = {
    "Black": 5, "White": 9, "Beige": 11, "Grey": 12, "Blue": 2, "Pink": 4, "Red": 18,
    "Green": 19, "Khaki green": 20, "Brown": 13, "Yellow": 8, "Orange": 3, "Turquoise": 7,
    "Lilac Purple": 6, "Metal": 15,
}
# colour_group_name -> (colour_group_code, perceived value, perceived master)
COLOURS: dict[str, tuple[int, str, str]] = {
    "Black": (9, "Dark", "Black"),
    "White": (10, "Light", "White"),
    "Off White": (11, "Dusty Light", "White"),
    "Light Beige": (12, "Dusty Light", "Beige"),
    "Beige": (13, "Medium Dusty", "Beige"),
    "Light Grey": (6, "Light", "Grey"),
    "Grey": (7, "Medium", "Grey"),
    "Dark Grey": (8, "Dark", "Grey"),
    "Light Blue": (71, "Light", "Blue"),
    "Blue": (72, "Medium", "Blue"),
    "Dark Blue": (73, "Dark", "Blue"),
    "Light Pink": (51, "Light", "Pink"),
    "Pink": (52, "Medium Dusty", "Pink"),
    "Red": (42, "Bright", "Red"),
    "Dark Red": (43, "Dark", "Red"),
    "Dark Green": (93, "Dark", "Green"),
    "Greenish Khaki": (19, "Medium Dusty", "Khaki green"),
    "Yellowish Brown": (17, "Medium Dusty", "Brown"),
    "Dark Yellow": (23, "Medium Dusty", "Yellow"),
    "Orange": (33, "Bright", "Orange"),
    "Light Turquoise": (61, "Light", "Turquoise"),
    "Light Purple": (81, "Light", "Lilac Purple"),
    "Silver": (3, "Medium", "Metal"),
    "Gold": (5, "Medium", "Metal"),
}

APPEARANCES: dict[str, int] = {
    "Solid": 1010016,
    "All over pattern": 1010001,
    "Melange": 1010010,
    "Stripe": 1010017,
    "Check": 1010004,
    "Front print": 1010008,
    "Lace": 1010021,
    "Denim": 1010023,
    "Other pattern": 1010026,
}

# Price points in the unit that the Kaggle prices are divided by PRICE_DIVISOR
# from (its prices are multiples of 1/590 or x.99/590).
PRICE_POINTS = np.array([
    3.99, 4.99, 5.99, 6.99, 7.99, 9.99, 12.99, 14.99, 17.99, 19.99, 24.99, 29.99, 34.99,
    39.99, 44.99, 49.99, 59.99, 69.99, 79.99, 99.99, 129.99, 149.99, 199.99, 249.99, 299.99,
])
PRICE_DIVISOR = 590.0
DISCOUNTS = np.array([1.0, 0.9, 0.8, 0.7, 0.6, 0.5])
DISCOUNT_PROBS = np.array([0.30, 0.25, 0.20, 0.15, 0.10])  # of the markdown levels 1..5


@dataclass(frozen=True)
class Cluster:
    """A style cluster: the attributes its articles are drawn from."""

    name: str
    index_code: str
    sections: tuple[str, ...]
    types: tuple[tuple[str, str], ...]  # (product_type_name, garment_group_name)
    colours: tuple[str, ...]
    appearances: tuple[str, ...]
    price: float  # typical price in PRICE_POINTS units
    season: tuple[int, float] = (0, 0.0)  # (peak day of year, amplitude)


CLUSTERS: tuple[Cluster, ...] = (
    Cluster("Divided trend tops", "D", ("Divided Collection",),
            (("Top", "Jersey Fancy"), ("Vest top", "Jersey Fancy"), ("Blouse", "Blouses")),
            ("Black", "White", "Light Pink", "Off White"), ("Solid", "Lace", "Front print"), 9.99),
    Cluster("Divided denim and bottoms", "D", ("Divided Basics", "Divided Collection"),
            (("Trousers", "Trousers Denim"), ("Shorts", "Shorts"), ("Skirt", "Skirts")),
            ("Blue", "Light Blue", "Black", "Dark Blue"), ("Denim", "Solid"), 17.99, (200, 0.3)),
    Cluster("Street tees and hoodies", "F", ("Contemporary Street",),
            (("T-shirt", "Jersey Fancy"), ("Hoodie", "Jersey Fancy"), ("Sweater", "Knitwear")),
            ("Black", "White", "Dark Grey", "Greenish Khaki"), ("Front print", "Solid"), 12.99),
    Cluster("Street trousers and sneakers", "F", ("Contemporary Street", "Men Shoes"),
            (("Trousers", "Trousers"), ("Shorts", "Shorts"), ("Sneakers", "Shoes")),
            ("Black", "Dark Blue", "Beige"), ("Solid", "Denim"), 19.99),
    Cluster("Ladies sportswear", "E", ("Ladies H&M Sport",),
            (("Leggings/Tights", "Jersey Fancy"), ("Vest top", "Jersey Fancy"), ("Top", "Jersey Fancy")),
            ("Black", "Dark Grey", "Pink", "Light Turquoise"), ("Solid", "Melange"), 14.99, (140, 0.2)),
    Cluster("Men sportswear", "E", ("Men H&M Sport",),
            (("T-shirt", "Jersey Basic"), ("Shorts", "Shorts"), ("Jacket", "Outdoor")),
            ("Black", "Dark Blue", "Grey"), ("Solid",), 14.99, (140, 0.2)),
    Cluster("Tailoring", "A", ("Womens Tailoring",),
            (("Blazer", "Dressed"), ("Trousers", "Trousers"), ("Skirt", "Skirts")),
            ("Black", "Beige", "Dark Blue", "Off White"), ("Solid", "Check"), 24.99),
    Cluster("Blouses and shirts", "A", ("Womens Tailoring", "Womens Everyday Collection"),
            (("Blouse", "Blouses"), ("Shirt", "Shirts")),
            ("White", "Light Blue", "Off White", "Light Beige"), ("Solid", "Stripe", "All over pattern"), 17.99),
    Cluster("Baby essentials", "G", ("Baby Essentials & Complements",),
            (("Bodysuit", "Jersey Basic"), ("Garment Set", "Jersey Basic"), ("Socks", "Socks and Tights")),
            ("White", "Light Pink", "Light Blue", "Light Grey"), ("Solid", "All over pattern"), 7.99),
    Cluster("Baby outfits", "G", ("Baby Girl", "Baby Boy"),
            (("Dress", "Woven/Jersey/Knitted mix Baby"), ("Garment Set", "Woven/Jersey/Knitted mix Baby"),
             ("Dungarees", "Woven/Jersey/Knitted mix Baby"), ("Sweater", "Knitwear")),
            ("Pink", "Light Blue", "Off White", "Dark Yellow"), ("All over pattern", "Front print"), 12.99),
    Cluster("Men casual shirts and knits", "F", ("Contemporary Casual",),
            (("Shirt", "Shirts"), ("Sweater", "Knitwear"), ("Cardigan", "Knitwear")),
            ("Dark Blue", "Light Grey", "Dark Green", "Beige"), ("Solid", "Check", "Melange"), 17.99, (330, 0.3)),
    Cluster("Men jeans and chinos", "F", ("Contemporary Casual",),
            (("Trousers", "Trousers Denim"), ("Shorts", "Shorts")),
            ("Dark Blue", "Blue", "Beige", "Black"), ("Denim", "Solid"), 19.99),
    Cluster("Kids girl", "H", ("Kids Girl",),
            (("Dress", "Dresses/Skirts girls"), ("Top", "Jersey Fancy"), ("Leggings/Tights", "Jersey Basic"),
             ("Skirt", "Dresses/Skirts girls")),
            ("Pink", "Light Pink", "Light Purple", "White"), ("Front print", "All over pattern", "Solid"), 9.99),
    Cluster("Kids boy", "H", ("Kids Boy",),
            (("T-shirt", "Jersey Fancy"), ("Shorts", "Shorts"), ("Trousers", "Trousers"), ("Hoodie", "Jersey Fancy")),
            ("Dark Blue", "Grey", "Dark Green", "Red"), ("Front print", "Solid"), 9.99),
    Cluster("Everyday jersey basics", "A", ("Womens Everyday Basics",),
            (("T-shirt", "Jersey Basic"), ("Vest top", "Jersey Basic"), ("Top", "Jersey Basic")),
            ("Black", "White", "Light Beige", "Grey"), ("Solid", "Stripe"), 5.99),
    Cluster("Basic trousers and leggings", "A", ("Womens Everyday Basics", "Womens Casual"),
            (("Trousers", "Trousers"), ("Leggings/Tights", "Jersey Basic"), ("Shorts", "Shorts")),
            ("Black", "Dark Blue", "Greenish Khaki"), ("Solid", "Denim"), 14.99),
    Cluster("Men smart", "F", ("Contemporary Smart",),
            (("Blazer", "Dressed"), ("Trousers", "Dressed"), ("Shirt", "Shirts")),
            ("Dark Blue", "Black", "Grey", "White"), ("Solid", "Check", "Stripe"), 29.99),
    Cluster("Men outerwear", "F", ("Mens Outerwear",),
            (("Coat", "Outdoor"), ("Jacket", "Outdoor")),
            ("Black", "Dark Blue", "Beige", "Dark Grey"), ("Solid",), 49.99, (320, 0.6)),
    Cluster("Knitwear", "A", ("Womens Everyday Collection",),
            (("Sweater", "Knitwear"), ("Cardigan", "Knitwear")),
            ("Beige", "Off White", "Dark Red", "Grey"), ("Melange", "Solid"), 17.99, (330, 0.5)),
    Cluster("Dresses", "A", ("Womens Everyday Collection", "Womens Casual"),
            (("Dress", "Dresses Ladies"), ("Jumpsuit/Playsuit", "Dresses Ladies"), ("Skirt", "Skirts")),
            ("Dark Blue", "Black", "Dark Red", "Light Beige"), ("All over pattern", "Solid"), 19.99, (170, 0.3)),
    Cluster("Lingerie", "B", ("Womens Lingerie",),
            (("Bra", "Under-, Nightwear"), ("Underwear bottom", "Under-, Nightwear")),
            ("Black", "Light Pink", "White", "Beige"), ("Lace", "Solid"), 12.99),
    Cluster("Nightwear and tights", "B", ("Womens Nightwear, Socks & Tigh",),
            (("Pyjama set", "Under-, Nightwear"), ("Underwear Tights", "Socks and Tights"),
             ("Socks", "Socks and Tights")),
            ("Black", "Light Grey", "Dark Blue", "Pink"), ("Solid", "All over pattern"), 9.99, (345, 0.3)),
    Cluster("Young girl", "I", ("Young Girl",),
            (("Top", "Jersey Fancy"), ("Dress", "Dresses/Skirts girls"), ("Trousers", "Trousers Denim"),
             ("Sweater", "Knitwear")),
            ("Black", "White", "Light Pink", "Light Purple"), ("Solid", "Front print"), 12.99),
    Cluster("Young boy", "I", ("Young Boy",),
            (("T-shirt", "Jersey Fancy"), ("Hoodie", "Jersey Fancy"), ("Trousers", "Trousers Denim"),
             ("Jacket", "Outdoor")),
            ("Black", "Dark Blue", "Greenish Khaki", "Grey"), ("Solid", "Front print"), 12.99),
    Cluster("Ladies accessories", "C", ("Womens Small accessories", "Womens Big accessories"),
            (("Earring", "Accessories"), ("Hair clip", "Accessories"), ("Bag", "Accessories"),
             ("Scarf", "Accessories"), ("Necklace", "Accessories")),
            ("Gold", "Silver", "Black", "Beige"), ("Solid", "Other pattern"), 7.99),
    Cluster("Ladies shoes", "C", ("Womens Shoes",),
            (("Boots", "Shoes"), ("Sneakers", "Shoes"), ("Sandals", "Shoes"), ("Ballerinas", "Shoes")),
            ("Black", "Beige", "White", "Yellowish Brown"), ("Solid",), 24.99),
    Cluster("Swimwear", "B", ("Womens Swimwear, beachwear",),
            (("Bikini top", "Swimwear"), ("Swimwear bottom", "Swimwear"), ("Swimsuit", "Swimwear")),
            ("Black", "Dark Blue", "Red", "Orange"), ("Solid", "All over pattern", "Stripe"), 12.99, (180, 0.8)),
    Cluster("Kids accessories and shoes", "J", ("Kids Accessories, Swimwear & D", "Kids & Baby Shoes"),
            (("Hat/beanie", "Accessories"), ("Sneakers", "Shoes"), ("Socks", "Socks and Tights"),
             ("Swimsuit", "Swimwear")),
            ("Dark Blue", "Pink", "Red", "White"), ("Solid", "All over pattern"), 7.99),
    Cluster("Divided accessories", "D", ("Divided Accessories",),
            (("Earring", "Accessories"), ("Hat/beanie", "Accessories"), ("Bag", "Accessories"),
             ("Sunglasses", "Accessories")),
            ("Gold", "Black", "Silver", "Light Pink"), ("Solid",), 5.99),
    Cluster("Men underwear and accessories", "F", ("Men Underwear", "Men Accessories"),
            (("Underwear bottom", "Under-, Nightwear"), ("Socks", "Socks and Tights"), ("Belt", "Accessories"),
             ("Hat/beanie", "Accessories")),
            ("Black", "Dark Blue", "Grey", "White"), ("Solid", "Stripe"), 7.99),
)


@dataclass(frozen=True)
class Segment:
    """A customer taste segment: who is in it and which clusters it buys from."""

    name: str
    ages: tuple[int, int]  # inclusive age band
    size: float  # relative number of customers
    clusters: tuple[int, int, int]  # preferred clusters, in CLUSTER_WEIGHTS order


# Three segments per age band, with different tastes: knowing a customer's age
# narrows their taste down to three segments, knowing their purchases to one.
SEGMENTS: tuple[Segment, ...] = (
    Segment("Young trend women", (16, 24), 1.4, (0, 1, 28)),
    Segment("Young streetwear men", (16, 24), 1.0, (2, 3, 29)),
    Segment("Young sporty", (16, 24), 0.8, (4, 5, 26)),
    Segment("Office women", (25, 34), 1.0, (6, 7, 25)),
    Segment("New parents", (25, 34), 0.8, (8, 9, 27)),
    Segment("Casual men", (25, 34), 0.8, (10, 11, 29)),
    Segment("Parents of kids", (35, 49), 0.8, (12, 13, 27)),
    Segment("Everyday basics women", (35, 49), 1.0, (14, 15, 24)),
    Segment("Parents of teens", (35, 49), 0.6, (22, 23, 28)),
    Segment("Smart men", (50, 79), 0.6, (16, 17, 11)),
    Segment("Classic women", (50, 79), 1.0, (18, 19, 24)),
    Segment("Lingerie and nightwear", (50, 79), 0.6, (20, 21, 26)),
)
CLUSTER_WEIGHTS = (0.40, 0.35, 0.25)

# Tuning constants of the simulation, all recorded in planted/segments.json.
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

# ---- text pieces for names and descriptions ----------------------------------

_NAMES = (
    "Luna", "Tilly", "Jade", "Pluto", "Mika", "Ben", "Timmy", "Sirpa", "Bobby", "Nora", "Elton",
    "Harry", "Ivy", "Vera", "Maja", "Alva", "Saga", "Elsa", "Otto", "Leo", "Kim", "Dana", "Rosa",
    "Lulu", "Fiona", "Gigi", "Hanna", "Iris", "Juno", "Kaja", "Lily", "Mona", "Nova", "Olly",
    "Pia", "Quinn", "Ruby", "Stella", "Tove", "Uma", "Vilma", "Wanda", "Zoe", "Axel", "Bruno",
    "Carl", "Dennis", "Emil", "Felix", "Gustav", "Hugo", "Isak", "Jonas", "Karl", "Lucas",
)
_MODIFIERS = ("", "", "", "HW ", "Slim ", "Oversized ", "2-pack ", "Basic ", "Soft ", "Relaxed ")
_MATERIALS: dict[str, tuple[str, ...]] = {
    "Garment Upper body": ("soft cotton jersey", "a fine knit", "airy woven fabric", "sweatshirt fabric",
                           "ribbed jersey", "a viscose weave", "cotton poplin"),
    "Garment Lower body": ("stretch denim", "woven fabric", "cotton twill", "soft jersey", "cotton canvas"),
    "Garment Full body": ("airy chiffon", "woven viscose fabric", "soft jersey", "cotton muslin"),
    "Underwear": ("soft microfibre", "lace", "cotton jersey"),
    "Socks & Tights": ("fine-knit fabric", "soft cotton-blend", "sheer nylon"),
    "Nightwear": ("soft cotton jersey", "woven cotton", "fleece"),
    "Swimwear": ("stretch fabric", "recycled polyamide"),
    "Shoes": ("imitation leather", "suede", "canvas", "knitted fabric"),
    "Accessories": ("metal", "woven straw", "a soft knit", "imitation leather", "cotton canvas"),
}
_FEATURES: dict[str, tuple[str, ...]] = {
    "Garment Upper body": ("a round neckline", "a V-neck", "long sleeves", "short sleeves", "dropped shoulders",
                           "a chest pocket", "buttons down the front", "ribbing at the cuffs and hem",
                           "a rounded hem", "narrow shoulder straps", "a printed motif"),
    "Garment Lower body": ("a high waist", "an elasticated waist", "a zip fly and button", "side pockets",
                           "slim legs", "wide legs", "raw-edge hems", "a drawstring"),
    "Garment Full body": ("a V-neck", "a tie belt", "short puff sleeves", "a flared skirt",
                          "a concealed zip at the back", "a smocked bodice"),
    "Underwear": ("adjustable shoulder straps", "underwired cups", "a lace trim", "an elasticated waist"),
    "Socks & Tights": ("a reinforced toe", "an elasticated waist", "a soft cuff"),
    "Nightwear": ("long sleeves", "an elasticated waist", "a chest pocket", "piping"),
    "Swimwear": ("lined cups", "ties at the back", "a high waist", "a full lining"),
    "Shoes": ("a padded insole", "a rubber sole", "laces at the front", "a zip at one side", "a block heel"),
    "Accessories": ("a metal clasp", "an adjustable strap", "a lined inside", "a zipped compartment"),
}
_FITS = ("Fitted", "Relaxed-fit", "Regular-fit", "Oversized", "Soft", "Classic", "Loose-fit")

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


# ---- public entry point --------------------------------------------------------


def generate(cfg: Config, out: str, scale: float | None = None, seed: int | None = None) -> dict:
    """Write articles.csv, customers.csv, transactions_train.csv and planted/ into ``out``.

    ``scale`` 1.0 is the Kaggle data set's size; ``None`` takes ``cfg.generate.scale``
    (and ``seed`` ``cfg.generate.seed``). The same scale and seed give
    byte-identical files. Returns rows per file and the elapsed seconds.
    """
    g = cfg.generate
    scale = g.scale if scale is None else float(scale)
    seed = g.seed if seed is None else int(seed)
    start, end = _date_range(g.start_date, g.end_date)
    _check_settings(cfg, scale, seed)
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise HmrecError(f"--out {out} is a file; give a directory for the generated CSV files")
    (out_dir / "planted").mkdir(parents=True, exist_ok=True)

    n_articles, n_customers, n_transactions = _sizes(scale, g.min_articles, g.min_customers)
    n_days = (end - start).days + 1
    rng = np.random.default_rng(seed)
    # Nothing is renamed into place before every file is complete, so a failed
    # run leaves the previous data set (if any) whole, plus no *.tmp files.
    written: list[Path] = []
    finished = False
    try:
        with stage(STAGE) as summary:
            log(STAGE, f"scale {scale}, seed {seed}: {n_articles} articles, {n_customers} customers, "
                       f"{n_transactions} transactions, {start} .. {end}, into {out_dir}")
            days = _day_weights(start, n_days)
            cat = _catalogue(rng, n_articles, n_days)
            written.append(_write_articles(out_dir / "articles.csv", cat))
            cat.rows = []  # the text columns are written; keep only the arrays
            cust = _customers(rng, n_customers, n_transactions, days, g)
            written.append(_write_customers(out_dir / "customers.csv", cust, g.chunk_rows))
            sim = _Simulation(rng, cat, cust, days, start, g)
            path, n_rows = _write_transactions(out_dir / "transactions_train.csv", sim, start, n_days, g.chunk_rows)
            written.extend(_write_planted(out_dir / "planted", cat, cust, scale, seed, start, end, g,
                                          {"articles": n_articles, "customers": n_customers,
                                           "transactions": n_rows}))
            # transactions_train.csv last: its presence means the data set is complete
            written.append(path)
            for tmp in written:
                os.replace(tmp, tmp.with_suffix(""))
            finished = True
            summary["articles"] = n_articles
            summary["customers"] = n_customers
            summary["transactions"] = n_rows
            summary["buyers"] = int((cust.n_items > 0).sum())
            summary["out"] = str(out_dir)
        return dict(summary)
    finally:
        if not finished:
            for name in OUTPUT_FILES:
                _tmp(out_dir / name).unlink(missing_ok=True)


# ---- settings ---------------------------------------------------------------------


def _date_range(start_text: str, end_text: str) -> tuple[dt.date, dt.date]:
    dates = []
    for key, text in (("generate.start_date", start_text), ("generate.end_date", end_text)):
        try:
            dates.append(dt.date.fromisoformat(str(text)))
        except ValueError:
            raise HmrecError(f"config key {key} is '{text}', not a date YYYY-MM-DD; "
                             f"fix it with --set {key}=2020-09-22") from None
    if (dates[1] - dates[0]).days < 28:
        raise HmrecError(f"generate.start_date {dates[0]} .. generate.end_date {dates[1]} spans less than "
                         f"28 days; the simulation needs at least four weeks")
    return dates[0], dates[1]


def _check_settings(cfg: Config, scale: float, seed: int) -> None:
    g = cfg.generate
    if not (0.0 < scale <= MAX_SCALE):
        raise HmrecError(f"scale {scale} is out of range: use 0 < scale <= {MAX_SCALE} "
                         f"(1.0 is the Kaggle data set's size)")
    if seed < 0:
        raise HmrecError(f"seed {seed} is negative; use a seed >= 0")
    checks = [
        ("generate.chunk_rows", g.chunk_rows, g.chunk_rows >= 1000, "at least 1000"),
        ("generate.min_articles", g.min_articles, g.min_articles >= 3 * len(CLUSTERS),
         f"at least {3 * len(CLUSTERS)} (three per style cluster)"),
        ("generate.min_customers", g.min_customers, g.min_customers >= len(SEGMENTS), f"at least {len(SEGMENTS)}"),
        ("generate.repeat_share", g.repeat_share, 0.0 <= g.repeat_share < 0.9, "in [0, 0.9)"),
        ("generate.explore_share", g.explore_share, 0.0 <= g.explore_share <= 1.0, "in [0, 1]"),
        ("generate.never_buy_share", g.never_buy_share, 0.0 <= g.never_buy_share < 1.0, "in [0, 1)"),
    ]
    for key, value, ok, need in checks:
        if not ok:
            raise HmrecError(f"config key {key} is {value}; it must be {need} (--set {key}=...)")


def _sizes(scale: float, min_articles: int, min_customers: int) -> tuple[int, int, int]:
    n_articles = max(min_articles, round(FULL_ARTICLES * scale))
    n_customers = max(min_customers, round(FULL_CUSTOMERS * scale))
    # Below the customer floor the transactions would thin out to a couple per
    # customer; ten each keeps the planted structure visible.
    n_transactions = max(10 * n_customers, round(FULL_TRANSACTIONS * scale))
    return n_articles, n_customers, n_transactions


@dataclass
class _Days:
    """Calendar of the simulated period: relative daily volume and its running sum."""

    weight: np.ndarray  # (n_days,)
    cum: np.ndarray  # (n_days + 1,), cum[d] = weight of the days before d
    doy: np.ndarray  # (n_days,) day of year, 1-based


def _day_weights(start: dt.date, n_days: int) -> _Days:
    d = np.arange(n_days)
    weekday = (start.weekday() + d) % 7
    doy = np.array([(start + dt.timedelta(days=int(i))).timetuple().tm_yday for i in d])
    lo, hi = PARAMS["trend"]
    w = (np.asarray(PARAMS["weekday_weights"])[weekday]
         * (1.0 + PARAMS["yearly_amplitude"] * np.cos(2 * np.pi * (doy - PARAMS["yearly_peak_doy"]) / 365.25))
         * (lo + (hi - lo) * d / max(n_days - 1, 1)))
    return _Days(weight=w, cum=np.concatenate([[0.0], np.cumsum(w)]), doy=doy)


# ---- articles -------------------------------------------------------------------


def _departments() -> dict[tuple[str, str], tuple[int, str]]:
    """(section, garment group) -> (department_no, department_name), from the cluster specs."""
    pairs = sorted({(s, gg) for c in CLUSTERS for s in c.sections for _, gg in c.types},
                   key=lambda p: (SECTIONS[p[0]][0], GARMENT_GROUPS[p[1]]))
    out: dict[tuple[str, str], tuple[int, str]] = {}
    per_section: dict[str, int] = {}
    for section, gg in pairs:
        k = per_section.get(section, 0) + 1
        per_section[section] = k
        no, prefix = SECTIONS[section]
        out[(section, gg)] = (no * 100 + 10 + k, f"{prefix} {gg}".strip())
    return out


@dataclass
class _Catalogue:
    """Articles in internal order (grouped by cluster); ``file_order`` sorts them by article_id."""

    article_id: np.ndarray  # (n,) int64, product_code * 1000 + variant
    cluster: np.ndarray  # (n,) int16
    cluster_start: np.ndarray  # (n_clusters + 1,) first internal index of each cluster
    launch: np.ndarray  # (n,) float64 day index, may be negative
    ramp: np.ndarray
    decay: np.ndarray  # inf for evergreen articles
    base: np.ndarray  # Zipf weight (times evergreen_level for evergreen articles)
    evergreen: np.ndarray  # (n,) bool
    price: np.ndarray  # (n,) regular price in PRICE_POINTS units
    rows: list[list]  # articles.csv rows, internal order
    file_order: np.ndarray  # internal indices sorted by article_id


def _largest_remainder(total: int, weights: np.ndarray, floor: int) -> np.ndarray:
    """Split ``total`` into integer parts proportional to ``weights``, each at least ``floor``."""
    k = len(weights)
    extra = total - floor * k
    raw = weights / weights.sum() * extra
    parts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - parts), kind="stable")
    parts[order[: extra - parts.sum()]] += 1
    return parts + floor


def _catalogue(rng: np.random.Generator, n_articles: int, n_days: int) -> _Catalogue:
    p = PARAMS
    n_clusters = len(CLUSTERS)
    sizes = _largest_remainder(n_articles, rng.uniform(0.6, 1.4, n_clusters), 3)
    departments = _departments()
    colour_names = list(COLOURS)
    appearance_names = list(APPEARANCES)

    cols: dict[str, list] = {k: [] for k in ("cluster", "launch", "evergreen", "price")}
    rows: list[list] = []
    product_launch: list[float] = []
    product_of_article: list[int] = []
    variant_no: list[int] = []
    for c, (spec, size) in enumerate(zip(CLUSTERS, sizes)):
        counts = np.minimum(rng.geometric(p["variant_p"], size), 10)
        n_products = int(np.searchsorted(np.cumsum(counts), size) + 1)
        counts = counts[:n_products]
        counts[-1] -= counts.sum() - size
        # Every cluster keeps at least one evergreen product, so it always has
        # something on sale; launches are stratified over the period so that
        # every cluster has new articles throughout, also at tiny scales.
        evergreen = rng.random(n_products) < p["evergreen_share"]
        evergreen[rng.integers(n_products)] = True
        n_new = int((~evergreen).sum())
        lo, hi = -p["launch_before_days"], n_days - 3
        strata = (rng.permutation(n_new) + rng.random(n_new)) / max(n_new, 1)
        launch = np.empty(n_products)
        launch[~evergreen] = np.floor(lo + strata * (hi - lo))
        launch[evergreen] = -rng.integers(200, 700, int(evergreen.sum()))
        type_idx = rng.integers(len(spec.types), size=n_products)
        section_idx = rng.integers(len(spec.sections), size=n_products)
        price = PRICE_POINTS[np.abs(np.log(PRICE_POINTS)[None, :] - (
            np.log(spec.price) + rng.normal(0.0, p["price_sigma"], n_products))[:, None]).argmin(axis=1)]
        for j in range(n_products):
            ptype, garment = spec.types[type_idx[j]]
            section = spec.sections[section_idx[j]]
            type_no, group = PRODUCT_TYPES[ptype]
            dept_no, dept_name = departments[(section, garment)]
            name = f"{_NAMES[rng.integers(len(_NAMES))]} {_MODIFIERS[rng.integers(len(_MODIFIERS))]}{ptype.lower()}"
            desc = _description(rng, ptype, group)
            index_name, index_group_no, index_group_name = INDEXES[spec.index_code]
            section_no = SECTIONS[section][0]
            variant = int(rng.integers(1, 6))
            pid = len(product_launch)
            product_launch.append(float(launch[j]))
            for v in range(int(counts[j])):
                colour = (spec.colours[rng.integers(len(spec.colours))] if rng.random() >= p["colour_noise"]
                          else colour_names[rng.integers(len(colour_names))])
                look = (spec.appearances[rng.integers(len(spec.appearances))]
                        if rng.random() >= p["appearance_noise"]
                        else appearance_names[rng.integers(len(appearance_names))])
                colour_code, value, master = COLOURS[colour]
                rows.append([
                    None, None, name, type_no, ptype, group, APPEARANCES[look], look, colour_code, colour,
                    PERCEIVED_VALUES[value], value, PERCEIVED_MASTERS[master], master, dept_no, dept_name,
                    spec.index_code, index_name, index_group_no, index_group_name, section_no, section,
                    GARMENT_GROUPS[garment], garment, desc,
                ])
                # colour variants of a product go on sale within two weeks of each other
                cols["launch"].append(launch[j] + (0 if v == 0 or evergreen[j] else int(rng.integers(0, 15))))
                cols["cluster"].append(c)
                cols["evergreen"].append(bool(evergreen[j]))
                cols["price"].append(float(price[j]))
                product_of_article.append(pid)
                variant_no.append(variant)
                variant += int(rng.integers(1, 8))

    n = len(rows)
    n_products = len(product_launch)
    # Product codes grow with launch date (as in the Kaggle data), with noise.
    codes = np.sort(rng.choice(np.arange(PRODUCT_CODE_RANGE[0], PRODUCT_CODE_RANGE[1] + 1), n_products,
                               replace=False))
    code_rank = np.argsort(np.asarray(product_launch) + rng.normal(0.0, 60.0, n_products), kind="stable")
    product_code = np.empty(n_products, dtype=np.int64)
    product_code[code_rank] = codes
    pcode = product_code[np.asarray(product_of_article)]
    article_id = pcode * 1000 + np.asarray(variant_no, dtype=np.int64)

    cluster = np.asarray(cols["cluster"], dtype=np.int16)
    cluster_start = np.concatenate([[0], np.cumsum(np.bincount(cluster, minlength=n_clusters))])
    evergreen = np.asarray(cols["evergreen"])
    # Zipf popularity by a random rank inside each cluster.
    base = np.empty(n)
    for c in range(n_clusters):
        a, b = cluster_start[c], cluster_start[c + 1]
        base[a:b] = (rng.permutation(b - a) + 1.0) ** -p["zipf_exponent"]
    base[evergreen] *= p["evergreen_level"]
    ramp = rng.uniform(*p["ramp_days"], n)
    decay = rng.uniform(*p["decay_days"], n)
    decay[evergreen] = np.inf

    n_empty = max(1, round(p["empty_desc_share"] * n))
    for i in rng.choice(n, n_empty, replace=False):
        rows[int(i)][24] = ""
    for i, row in enumerate(rows):
        row[0] = f"{article_id[i]:010d}"
        row[1] = int(pcode[i])
    return _Catalogue(
        article_id=article_id, cluster=cluster, cluster_start=cluster_start,
        launch=np.asarray(cols["launch"], dtype=np.float64), ramp=ramp, decay=decay, base=base,
        evergreen=evergreen, price=np.asarray(cols["price"]), rows=rows,
        file_order=np.argsort(article_id, kind="stable"),
    )


def _description(rng: np.random.Generator, ptype: str, group: str) -> str:
    materials = _MATERIALS.get(group, _MATERIALS["Garment Upper body"])
    features = _FEATURES.get(group, _FEATURES["Garment Upper body"])
    k = int(rng.integers(1, 4))
    picked = [features[i] for i in rng.choice(len(features), size=min(k, len(features)), replace=False)]
    listed = picked[0] if len(picked) == 1 else ", ".join(picked[:-1]) + " and " + picked[-1]
    fit = _FITS[rng.integers(len(_FITS))]
    return f"{fit} {ptype.lower()} in {materials[rng.integers(len(materials))]} with {listed}."


# ---- customers -----------------------------------------------------------------


@dataclass
class _Customers:
    """Customers in customer_id order, with the hidden state that drives their purchases."""

    hex_id: np.ndarray  # (n, 64) uint8
    segment: np.ndarray  # (n,) int8
    cluster_w: np.ndarray  # (n, 3) float64, weights of the segment's clusters
    age: np.ndarray  # (n,) int16, 0 = unknown
    fn: np.ndarray  # (n,) bool
    active: np.ndarray
    club: np.ndarray  # 0 empty, 1 ACTIVE, 2 PRE-CREATE, 3 LEFT CLUB
    news: np.ndarray  # 0 empty, 1 NONE, 2 Regularly, 3 Monthly
    postal: np.ndarray  # (n,) index into postal_hex
    postal_hex: np.ndarray  # (n_postal, 64) uint8
    online: np.ndarray  # (n,) chance a visit is online (channel 2)
    p_repeat: np.ndarray  # (n,) chance a purchase re-buys a recent article
    first_day: np.ndarray  # (n,) int32, active period (inclusive)
    last_day: np.ndarray
    n_items: np.ndarray  # (n,) int64 purchases over the whole period


def _hex(raw: np.ndarray) -> np.ndarray:
    """(n, k) bytes -> (n, 2k) lowercase hex digits as uint8."""
    out = np.empty((raw.shape[0], raw.shape[1] * 2), dtype=np.uint8)
    out[:, 0::2] = _HEX[raw >> 4]
    out[:, 1::2] = _HEX[raw & 15]
    return out


def _sorted_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct 64-hex-digit ids in ascending order (the Kaggle file's order)."""
    while True:
        head = np.sort(rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True))
        if n < 2 or (np.diff(head) > 0).all():
            break
    raw = np.empty((n, 32), dtype=np.uint8)
    # the first 8 bytes, big-endian, carry the sort order
    raw[:, :8] = head.astype(">u8").view(np.uint8).reshape(n, 8)
    raw[:, 8:] = rng.integers(0, 256, (n, 24), dtype=np.uint8)
    return _hex(raw)


def _customers(rng: np.random.Generator, n: int, n_transactions: int, days: _Days, g: GenerateConfig) -> _Customers:
    p = PARAMS
    n_days = len(days.weight)
    hex_id = _sorted_ids(rng, n)
    sizes = np.array([s.size for s in SEGMENTS])
    segment = rng.choice(len(SEGMENTS), n, p=sizes / sizes.sum()).astype(np.int8)
    conc = p["cluster_weight_concentration"] * np.asarray(CLUSTER_WEIGHTS)
    gam = rng.gamma(np.broadcast_to(conc, (n, 3)))
    cluster_w = gam / gam.sum(axis=1, keepdims=True)

    band_lo = np.array([s.ages[0] for s in SEGMENTS])[segment]
    band_hi = np.array([s.ages[1] for s in SEGMENTS])[segment]
    in_band = rng.random(n) < p["age_in_band"]
    age = np.where(in_band, rng.integers(band_lo, band_hi + 1), rng.integers(16, 86, n))
    age = np.where(rng.random(n) < p["empty_age_share"], 0, age).astype(np.int16)

    fn = rng.random(n) < 0.35
    active = np.where(fn, rng.random(n) < 0.95, rng.random(n) < 0.01)
    club = rng.choice(4, n, p=[0.0045, 0.9271, 0.068, 0.0004]).astype(np.int8)
    news = np.where(fn, rng.choice(4, n, p=[0.008, 0.02, 0.97, 0.002]),
                    rng.choice(4, n, p=[0.012, 0.986, 0.001, 0.001])).astype(np.int8)
    n_postal = max(1, n // p["customers_per_postal_code"])
    postal_hex = _hex(rng.integers(0, 256, (n_postal, 32), dtype=np.uint8))
    postal = np.where(rng.random(n) < p["default_postal_share"], 0, rng.integers(0, n_postal, n))

    online = rng.beta(*p["online_share_beta"], n)

    joined = rng.random(n) < p["joined_before_share"]
    first_day = np.where(joined, 0, rng.integers(0, n_days - 1, n))
    life_min, life_mean = p["lifetime_days"]
    last_day = np.minimum(first_day + life_min + rng.exponential(life_mean, n).astype(np.int64), n_days - 1)

    buys = rng.random(n) >= g.never_buy_share
    n_buyers = int(buys.sum())
    if n_buyers > n_transactions:
        buys[np.flatnonzero(buys)[n_transactions:]] = False
        n_buyers = n_transactions
    # Clipped so that at tiny scales a single customer does not dominate the data.
    sigma = p["activity_sigma"]
    rate = np.exp(np.minimum(rng.normal(0.0, sigma, n), 2.5 * sigma)) * np.where(fn, p["fn_activity"], 1.0)
    window = days.cum[last_day + 1] - days.cum[first_day]
    n_items = buys.astype(np.int64)
    if n_buyers:
        # multinomial over the buyers only: a never-buyer cannot get a purchase
        # through numpy giving the last category 1 - sum(others)
        w = (rate * window)[buys]
        n_items[buys] += rng.multinomial(n_transactions - n_buyers, w / w.sum())
    # A customer's first visit (1 / new_visit_prob items on average) has nothing
    # to re-buy; the mean chance is raised by that share of all purchases so
    # that re-buys come out near repeat_share overall.
    first_visit = np.minimum(n_items, 1.0 / p["new_visit_prob"]).sum() / max(n_items.sum(), 1)
    mean_rep = min(0.95, g.repeat_share / max(1.0 - first_visit, 0.05))
    conc_rep = 6.0
    p_repeat = rng.beta(max(mean_rep * conc_rep, 1e-3), max((1 - mean_rep) * conc_rep, 1e-3), n)
    return _Customers(
        hex_id=hex_id, segment=segment, cluster_w=cluster_w, age=age, fn=fn, active=active, club=club,
        news=news, postal=postal, postal_hex=postal_hex, online=online, p_repeat=p_repeat,
        first_day=first_day.astype(np.int32), last_day=last_day.astype(np.int32), n_items=n_items,
    )


# ---- transactions ------------------------------------------------------------


@dataclass
class _Chunk:
    """One calendar month of transactions, date-ordered: indices into the encoding tables."""

    label: str
    day: np.ndarray  # day index
    customer: np.ndarray  # customer index
    article: np.ndarray  # internal article index
    level: np.ndarray  # discount level (0 = full price)
    channel: np.ndarray  # 1 store, 2 online


class _Simulation:
    """Day-by-day purchase simulation; yields one calendar month at a time."""

    def __init__(self, rng: np.random.Generator, cat: _Catalogue, cust: _Customers, days: _Days,
                 start: dt.date, g: GenerateConfig) -> None:
        self.rng, self.cat, self.cust, self.days, self.start = rng, cat, cust, days, start
        self.explore = g.explore_share
        n = len(cust.segment)
        r = PARAMS["history_size"]
        self.ring = np.full((n, r), -1, dtype=np.int32)  # last r articles bought, circular
        self.pushed = np.zeros(n, dtype=np.int64)  # articles pushed into the ring so far
        self.remaining = cust.n_items.copy()
        self.seg_clusters = np.array([s.clusters for s in SEGMENTS], dtype=np.int64)
        peak = np.array([c.season[0] for c in CLUSTERS])[:, None]
        amp = np.array([c.season[1] for c in CLUSTERS])[:, None]
        self.season = 1.0 + amp * np.cos(2 * np.pi * (days.doy[None, :] - peak) / 365.25)  # (clusters, days)

    def months(self) -> Iterator[_Chunk]:
        """Chunks of transactions, one per calendar month, in date order."""
        n_days = len(self.days.weight)
        d = 0
        while d < n_days:
            first = self.start + dt.timedelta(days=d)
            nxt = (first.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
            m1 = min(n_days, (nxt - self.start).days)
            yield self._month(d, m1, first.strftime("%Y-%m"))
            d = m1

    def _month(self, m0: int, m1: int, label: str) -> _Chunk:
        rng, cust, cum = self.rng, self.cust, self.days.cum
        # Each customer's remaining purchases are split over the remaining months
        # of their active period in proportion to daily volume: a binomial draw
        # per month, which sums to exactly n_items over the whole period.
        idx = np.flatnonzero((self.remaining > 0) & (cust.first_day < m1))
        lo = np.maximum(cust.first_day[idx], m0)
        hi = np.minimum(cust.last_day[idx] + 1, m1)
        here = np.maximum(cum[hi] - cum[lo], 0.0)
        left = cum[cust.last_day[idx] + 1] - cum[lo]
        prob = np.clip(np.divide(here, left, out=np.zeros_like(here), where=left > 0), 0.0, 1.0)
        k = rng.binomial(self.remaining[idx], prob)
        self.remaining[idx] -= k
        keep = k > 0
        idx, lo, hi, k = idx[keep], lo[keep], hi[keep], k[keep]

        # Items -> visits (baskets) -> a day and a channel per visit.
        owner = np.repeat(np.arange(len(idx)), k)
        first_item = np.ones(len(owner), dtype=bool)
        first_item[1:] = owner[1:] != owner[:-1]
        new_visit = first_item | (rng.random(len(owner)) < PARAMS["new_visit_prob"])
        visit = np.cumsum(new_visit) - 1
        v_owner = owner[new_visit]
        x = cum[lo[v_owner]] + rng.random(len(v_owner)) * (cum[hi[v_owner]] - cum[lo[v_owner]])
        v_day = np.clip(np.searchsorted(cum, x, side="right") - 1, lo[v_owner], hi[v_owner] - 1)
        v_channel = np.where(rng.random(len(v_owner)) < cust.online[idx[v_owner]], 2, 1).astype(np.int8)

        customer = idx[owner]
        day = v_day[visit]
        # Kaggle order: by date, then customer id; a visit's items stay together.
        order = np.argsort(day.astype(np.int64) * len(cust.segment) + customer, kind="stable")
        customer, day, visit = customer[order], day[order], visit[order]
        channel = v_channel[visit]
        article = np.empty(len(order), dtype=np.int32)
        level = np.empty(len(order), dtype=np.int8)
        bounds = np.searchsorted(day, np.arange(m0, m1 + 1))
        for d in range(m0, m1):
            a, b = bounds[d - m0], bounds[d - m0 + 1]
            if b > a:
                article[a:b], level[a:b] = self._day(d, customer[a:b], visit[a:b])
        return _Chunk(label, day, customer, article, level, channel)

    def _day(self, d: int, c: np.ndarray, visit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng, cat, cust, p = self.rng, self.cat, self.cust, PARAMS
        n = len(c)
        r = self.ring.shape[1]
        # Sales weight of every article today: Zipf base x sales life x season.
        age = d - cat.launch
        life = np.where(age < 0, 0.0,
                        np.minimum(1.0, (age + 1.0) / cat.ramp) * np.exp(-np.maximum(age - cat.ramp, 0.0) / cat.decay)
                        + p["life_floor"])
        w = cat.base * life * self.season[cat.cluster, d]
        cum = np.cumsum(w)
        starts = cat.cluster_start
        c_lo = np.concatenate([[0.0], cum])[starts[:-1]]
        c_hi = cum[starts[1:] - 1]

        pushed = self.pushed[c]
        filled = np.minimum(pushed, p["repeat_from_last"])
        is_rep = (filled > 0) & (rng.random(n) < cust.p_repeat[c])

        # Re-buys: one of the last `filled` articles, the recent ones more likely.
        slot = np.minimum((filled * rng.random(n) ** p["repeat_recency_power"]).astype(np.int64),
                          np.maximum(filled - 1, 0))
        pos = (pushed - 1 - slot) % r
        article = np.where(is_rep, self.ring[c, pos], 0)

        # New articles: from one of the customer's own clusters, or from the
        # whole catalogue (explore). Each draw is a range of the cumulative
        # weights (and of article indices) to sample in.
        new = np.flatnonzero(~is_rep)
        m = len(new)
        explore = rng.random(m) < self.explore
        clusters = self.seg_clusters[cust.segment[c[new]]]  # (m, 3)
        cw = np.cumsum(cust.cluster_w[c[new]] * self.season[clusters, d], axis=1)
        u = rng.random(m) * cw[:, -1]
        cl = clusters[np.arange(m), np.minimum((u >= cw[:, 0]).astype(np.int64) + (u >= cw[:, 1]), 2)]
        lo_v = np.where(explore, 0.0, c_lo[cl])
        hi_v = np.where(explore, cum[-1], c_hi[cl])
        lo_i = np.where(explore, 0, starts[cl])
        hi_i = np.where(explore, len(cum), starts[cl + 1])

        def draw(rows: np.ndarray) -> np.ndarray:
            target = lo_v[rows] + rng.random(len(rows)) * (hi_v[rows] - lo_v[rows])
            return np.clip(np.searchsorted(cum, target, side="right"), lo_i[rows], hi_i[rows] - 1)

        article[new] = draw(np.arange(m))
        # A new purchase is an article the customer has not bought recently:
        # redraw (in the same range) the few that hit their history. Heavy
        # buyers in a small catalogue can exhaust a cluster's best sellers;
        # their last chance is a uniform draw among the range's articles on sale.
        for attempt in range(p["exclude_retries"] + 1):
            hit = np.flatnonzero((self.ring[c[new]] == article[new, None]).any(axis=1))
            if len(hit) == 0:
                break
            if attempt < p["exclude_retries"]:
                article[new[hit]] = draw(hit)
            else:
                on_sale = np.concatenate([[0], np.cumsum(w > 0)])
                first = on_sale[lo_i[hit]]
                count = on_sale[hi_i[hit]] - first
                k = (rng.random(len(hit)) * count).astype(np.int64)
                article[new[hit]] = np.searchsorted(on_sale, first + k + 1, side="left") - 1

        # Markdowns get likelier as an article ages (not for evergreen basics).
        a_age = np.maximum(d - cat.launch[article], 0.0)
        base_md, max_md, tau_md = p["markdown"]
        p_md = base_md + np.where(cat.evergreen[article], 0.0, max_md * (1.0 - np.exp(-a_age / tau_md)))
        level = np.where(rng.random(n) < p_md,
                         1 + np.searchsorted(np.cumsum(DISCOUNT_PROBS), rng.random(n) * DISCOUNT_PROBS.sum(),
                                             side="right"), 0)
        level = np.minimum(level, len(DISCOUNTS) - 1).astype(np.int8)

        # Two of the same item in one visit: identical rows, as in the Kaggle file.
        if n > 1:
            dup = np.zeros(n, dtype=bool)
            dup[1:] = (visit[1:] == visit[:-1]) & (rng.random(n - 1) < p["same_day_duplicate"])
            dup[1:] &= ~dup[:-1]
            j = np.flatnonzero(dup)
            article[j] = article[j - 1]
            level[j] = level[j - 1]

        # Push today's articles into each customer's ring (rows of a customer are
        # contiguous: the day is sorted by customer).
        head = np.ones(n, dtype=bool)
        head[1:] = c[1:] != c[:-1]
        group = np.cumsum(head) - 1
        heads = np.flatnonzero(head)
        rank = np.arange(n) - heads[group]
        self.ring[c, (pushed + rank) % r] = article
        self.pushed[c[heads]] += np.diff(np.append(heads, n))
        return article, level


# ---- writing -----------------------------------------------------------------


def _table(strings: list[bytes] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Byte strings -> (k, width) uint8 table padded with zeros, and their lengths."""
    arr = np.asarray(strings, dtype=np.bytes_)
    width = max(arr.dtype.itemsize, 1)
    arr = arr.astype(f"S{width}")
    return arr.view(np.uint8).reshape(len(arr), width), np.char.str_len(arr).astype(np.int64)


def _encode(fields: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]) -> bytes:
    """Concatenate per-row fields into CSV bytes.

    Each field is ``(table, lengths, index)``: row i gets ``table[index[i]]``
    cut to its length (``index`` None means row i of the table). Separators
    are part of the table entries. Rows are laid out at fixed offsets and the
    padding is squeezed out with one boolean mask, which keeps it all in numpy.
    """
    n = len(fields[0][2]) if fields[0][2] is not None else len(fields[0][0])
    widths = [t.shape[1] for t, _, _ in fields]
    buf = np.empty((n, sum(widths)), dtype=np.uint8)
    mask = np.empty(buf.shape, dtype=bool)
    off = 0
    for (table, lens, index), w in zip(fields, widths):
        buf[:, off:off + w] = table if index is None else table[index]
        if (lens == w).all():
            mask[:, off:off + w] = True
        else:
            row_lens = lens if index is None else lens[index]
            mask[:, off:off + w] = np.arange(w)[None, :] < row_lens[:, None]
        off += w
    return buf[mask].tobytes()


def _with_sep(hex_ids: np.ndarray, sep: bytes) -> tuple[np.ndarray, np.ndarray]:
    table = np.empty((hex_ids.shape[0], hex_ids.shape[1] + 1), dtype=np.uint8)
    table[:, :-1] = hex_ids
    table[:, -1] = ord(sep)
    return table, np.full(len(table), table.shape[1], dtype=np.int64)


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def _header(columns: list[tuple[str, object]]) -> bytes:
    return (",".join(name for name, _ in columns) + "\n").encode()


def _write_articles(path: Path, cat: _Catalogue) -> Path:
    tmp = _tmp(path)
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow([name for name, _ in ARTICLE_COLUMNS])
        writer.writerows(cat.rows[int(i)] for i in cat.file_order)
    log(STAGE, f"articles.csv: {len(cat.rows)} rows")
    return tmp


def _write_customers(path: Path, cust: _Customers, chunk_rows: int) -> Path:
    ages = [b","] + [f"{a},".encode() for a in range(1, 100)]
    flag = _table([b",", b"1.0,"])
    fields = [
        (*_with_sep(cust.hex_id, b","), None),
        (*flag, cust.fn.astype(np.int64)),
        (*flag, cust.active.astype(np.int64)),
        (*_table([b",", b"ACTIVE,", b"PRE-CREATE,", b"LEFT CLUB,"]), cust.club.astype(np.int64)),
        (*_table([b",", b"NONE,", b"Regularly,", b"Monthly,"]), cust.news.astype(np.int64)),
        (*_table(ages), cust.age.astype(np.int64)),
        (*_with_sep(cust.postal_hex, b"\n"), cust.postal),
    ]
    tmp = _tmp(path)
    with open(tmp, "wb") as f:
        f.write(_header(CUSTOMER_COLUMNS))
        step = chunk_rows
        for a in range(0, len(cust.segment), step):
            part = [(t, l, (np.arange(a, min(a + step, len(cust.segment))) if i is None else i[a:a + step]))
                    for t, l, i in fields]
            f.write(_encode(part))
    log(STAGE, f"customers.csv: {len(cust.segment)} rows")
    return tmp


def _write_transactions(path: Path, sim: _Simulation, start: dt.date, n_days: int,
                        chunk_rows: int) -> tuple[Path, int]:
    cat = sim.cat
    date_tab = _table([f"{start + dt.timedelta(days=i)},".encode() for i in range(n_days)])
    cust_tab = _with_sep(sim.cust.hex_id, b",")
    art_tab = _table([f"{a:010d},".encode() for a in cat.article_id])
    # Every price a row can carry, as text: article x discount level x channel.
    units = np.round(cat.price[:, None] * DISCOUNTS[None, :], 2)
    price_txt = (units / PRICE_DIVISOR).astype(np.bytes_)  # shortest round-trip repr
    tails = np.stack([np.char.add(price_txt, b",1\n"), np.char.add(price_txt, b",2\n")], axis=-1)
    tail_tab = _table(tails.reshape(-1))
    n_levels = len(DISCOUNTS)

    tmp = _tmp(path)
    total = 0
    with open(tmp, "wb") as f:
        f.write(_header(TRANSACTION_COLUMNS))
        t0 = time.perf_counter()
        for chunk in sim.months():
            n = len(chunk.day)
            tail = (chunk.article.astype(np.int64) * n_levels + chunk.level) * 2 + (chunk.channel - 1)
            for a in range(0, n, chunk_rows):
                s = slice(a, a + chunk_rows)
                f.write(_encode([
                    (*date_tab, chunk.day[s]),
                    (*cust_tab, chunk.customer[s]),
                    (*art_tab, chunk.article[s]),
                    (*tail_tab, tail[s]),
                ]))
            total += n
            now = time.perf_counter()
            log(STAGE, f"transactions {chunk.label}: {n} rows written ({total} so far, "
                       f"{n / max(now - t0, 1e-9):,.0f} rows/s)")
            t0 = now
    planned = int(sim.cust.n_items.sum())
    if total != planned:
        raise HmrecError(f"transactions_train.csv: wrote {total} rows but planned {planned}; "
                         f"this is a bug in hmrec.synth.generate, please report it with the scale and seed")
    return tmp, total


def _write_planted(planted: Path, cat: _Catalogue, cust: _Customers, scale: float, seed: int,
                   start: dt.date, end: dt.date, g: GenerateConfig, sizes: dict) -> list[Path]:
    paths = []
    seg_tab = _table([f"{s}\n".encode() for s in range(len(SEGMENTS))])
    tmp = _tmp(planted / "customer_segments.csv")
    with open(tmp, "wb") as f:
        f.write(b"customer_id,segment\n")
        f.write(_encode([(*_with_sep(cust.hex_id, b","), None), (*seg_tab, cust.segment.astype(np.int64))]))
    paths.append(tmp)

    tmp = _tmp(planted / "article_clusters.csv")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("article_id,cluster\n")
        f.writelines(f"{cat.article_id[i]:010d},{cat.cluster[i]}\n" for i in cat.file_order)
    paths.append(tmp)

    info = {
        "segments": {str(i): list(s.clusters) for i, s in enumerate(SEGMENTS)},
        "segment_info": {
            str(i): {"name": s.name, "ages": list(s.ages), "size": s.size, "clusters": list(s.clusters),
                     "cluster_weights": list(CLUSTER_WEIGHTS),
                     "customers": int((cust.segment == i).sum())}
            for i, s in enumerate(SEGMENTS)
        },
        "clusters": {
            str(i): {"name": c.name, "index_code": c.index_code, "sections": list(c.sections),
                     "product_types": sorted({t for t, _ in c.types}),
                     "garment_groups": sorted({gg for _, gg in c.types}), "colours": list(c.colours),
                     "appearances": list(c.appearances), "typical_price": round(c.price / PRICE_DIVISOR, 6),
                     "season_peak_doy": c.season[0], "season_amplitude": c.season[1],
                     "articles": int((cat.cluster == i).sum())}
            for i, c in enumerate(CLUSTERS)
        },
        "params": {
            "scale": scale, "seed": seed, "start_date": str(start), "end_date": str(end), **sizes,
            "repeat_share": g.repeat_share, "explore_share": g.explore_share,
            "never_buy_share": g.never_buy_share, "min_articles": g.min_articles,
            "min_customers": g.min_customers, **PARAMS,
        },
    }
    tmp = _tmp(planted / "segments.json")
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    paths.append(tmp)
    return paths
