"""The generated world: style clusters, taste segments, the catalogue and the customers.

Everything here is drawn once, before the first day: what exists and what
customers like. What they buy, and when, is :mod:`hmrec.synth.simulate`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hmrec.lake.schemas import ARTICLE_COLUMNS
from hmrec.synth.params import CLUSTER_WEIGHTS, Params
from hmrec.synth.vocab import (APPEARANCES, COLOURS, FEATURES, FITS, GARMENT_GROUPS, INDEXES, MATERIALS, MODIFIERS,
                               NAMES, PERCEIVED_MASTERS, PERCEIVED_VALUES, PRICE_POINTS, PRODUCT_CODE_RANGE,
                               PRODUCT_TYPES, SECTIONS)

# ---- style clusters and taste segments -----------------------------------------


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

_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
# Position of detail_desc in an articles.csv row.
_DESC = [name for name, _ in ARTICLE_COLUMNS].index("detail_desc")


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


@dataclass(frozen=True)
class Catalogue:
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


def catalogue(rng: np.random.Generator, n_articles: int, n_days: int, p: Params) -> tuple[Catalogue, list[list]]:
    """``n_articles`` articles launched over ``n_days``, and their articles.csv rows (internal order).

    The rows are returned apart from the arrays because only the articles.csv
    writer needs them: the caller can drop them once written, which at full
    scale frees the largest object the catalogue has.
    """
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
        counts = np.minimum(rng.geometric(p.variant_p, size), 10)
        n_products = int(np.searchsorted(np.cumsum(counts), size) + 1)
        counts = counts[:n_products]
        counts[-1] -= counts.sum() - size
        # Every cluster keeps at least one evergreen product, so it always has
        # something on sale; launches are stratified over the period so that
        # every cluster has new articles throughout, also at tiny scales.
        evergreen = rng.random(n_products) < p.evergreen_share
        evergreen[rng.integers(n_products)] = True
        n_new = int((~evergreen).sum())
        lo, hi = -p.launch_before_days, n_days - 3
        strata = (rng.permutation(n_new) + rng.random(n_new)) / max(n_new, 1)
        launch = np.empty(n_products)
        launch[~evergreen] = np.floor(lo + strata * (hi - lo))
        launch[evergreen] = -rng.integers(200, 700, int(evergreen.sum()))
        type_idx = rng.integers(len(spec.types), size=n_products)
        section_idx = rng.integers(len(spec.sections), size=n_products)
        price = PRICE_POINTS[np.abs(np.log(PRICE_POINTS)[None, :] - (
            np.log(spec.price) + rng.normal(0.0, p.price_sigma, n_products))[:, None]).argmin(axis=1)]
        for j in range(n_products):
            ptype, garment = spec.types[type_idx[j]]
            section = spec.sections[section_idx[j]]
            type_no, group = PRODUCT_TYPES[ptype]
            dept_no, dept_name = departments[(section, garment)]
            name = f"{NAMES[rng.integers(len(NAMES))]} {MODIFIERS[rng.integers(len(MODIFIERS))]}{ptype.lower()}"
            desc = _description(rng, ptype, group)
            index_name, index_group_no, index_group_name = INDEXES[spec.index_code]
            section_no = SECTIONS[section][0]
            variant = int(rng.integers(1, 6))
            pid = len(product_launch)
            product_launch.append(float(launch[j]))
            for v in range(int(counts[j])):
                colour = (spec.colours[rng.integers(len(spec.colours))] if rng.random() >= p.colour_noise
                          else colour_names[rng.integers(len(colour_names))])
                look = (spec.appearances[rng.integers(len(spec.appearances))]
                        if rng.random() >= p.appearance_noise
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
        base[a:b] = (rng.permutation(b - a) + 1.0) ** -p.zipf_exponent
    base[evergreen] *= p.evergreen_level
    ramp = rng.uniform(*p.ramp_days, n)
    decay = rng.uniform(*p.decay_days, n)
    decay[evergreen] = np.inf

    n_empty = max(1, round(p.empty_desc_share * n))
    for i in rng.choice(n, n_empty, replace=False):
        rows[int(i)][_DESC] = ""
    for i, row in enumerate(rows):
        row[0] = f"{article_id[i]:010d}"
        row[1] = int(pcode[i])
    cat = Catalogue(
        article_id=article_id, cluster=cluster, cluster_start=cluster_start,
        launch=np.asarray(cols["launch"], dtype=np.float64), ramp=ramp, decay=decay, base=base,
        evergreen=evergreen, price=np.asarray(cols["price"]),
        file_order=np.argsort(article_id, kind="stable"),
    )
    return cat, rows


def _description(rng: np.random.Generator, ptype: str, group: str) -> str:
    materials = MATERIALS.get(group, MATERIALS["Garment Upper body"])
    features = FEATURES.get(group, FEATURES["Garment Upper body"])
    k = int(rng.integers(1, 4))
    picked = [features[i] for i in rng.choice(len(features), size=min(k, len(features)), replace=False)]
    listed = picked[0] if len(picked) == 1 else ", ".join(picked[:-1]) + " and " + picked[-1]
    fit = FITS[rng.integers(len(FITS))]
    return f"{fit} {ptype.lower()} in {materials[rng.integers(len(materials))]} with {listed}."


# ---- customers -----------------------------------------------------------------


@dataclass(frozen=True)
class Customers:
    """Customers in customer_id order: the customers.csv columns and their hidden taste.

    How much and when each customer buys is the simulation's purchase plan
    (:class:`hmrec.synth.simulate.Plan`).
    """

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


def hex_digits(raw: np.ndarray) -> np.ndarray:
    """(n, k) bytes -> (n, 2k) lowercase hex digits as uint8."""
    out = np.empty((raw.shape[0], raw.shape[1] * 2), dtype=np.uint8)
    out[:, 0::2] = _HEX[raw >> 4]
    out[:, 1::2] = _HEX[raw & 15]
    return out


def sorted_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct 64-hex-digit ids in ascending order (the Kaggle file's order)."""
    while True:
        head = np.sort(rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True))
        if n < 2 or (np.diff(head) > 0).all():
            break
    raw = np.empty((n, 32), dtype=np.uint8)
    # the first 8 bytes, big-endian, carry the sort order
    raw[:, :8] = head.astype(">u8").view(np.uint8).reshape(n, 8)
    raw[:, 8:] = rng.integers(0, 256, (n, 24), dtype=np.uint8)
    return hex_digits(raw)


def customers(rng: np.random.Generator, n: int, p: Params) -> Customers:
    """``n`` customers with ids, profile columns, a taste segment and cluster weights."""
    hex_id = sorted_ids(rng, n)
    sizes = np.array([s.size for s in SEGMENTS])
    segment = rng.choice(len(SEGMENTS), n, p=sizes / sizes.sum()).astype(np.int8)
    conc = p.cluster_weight_concentration * np.asarray(CLUSTER_WEIGHTS)
    gam = rng.gamma(np.broadcast_to(conc, (n, 3)))
    cluster_w = gam / gam.sum(axis=1, keepdims=True)

    band_lo = np.array([s.ages[0] for s in SEGMENTS])[segment]
    band_hi = np.array([s.ages[1] for s in SEGMENTS])[segment]
    in_band = rng.random(n) < p.age_in_band
    age = np.where(in_band, rng.integers(band_lo, band_hi + 1), rng.integers(16, 86, n))
    age = np.where(rng.random(n) < p.empty_age_share, 0, age).astype(np.int16)

    fn = rng.random(n) < 0.35
    active = np.where(fn, rng.random(n) < 0.95, rng.random(n) < 0.01)
    club = rng.choice(4, n, p=[0.0045, 0.9271, 0.068, 0.0004]).astype(np.int8)
    news = np.where(fn, rng.choice(4, n, p=[0.008, 0.02, 0.97, 0.002]),
                    rng.choice(4, n, p=[0.012, 0.986, 0.001, 0.001])).astype(np.int8)
    n_postal = max(1, n // p.customers_per_postal_code)
    postal_hex = hex_digits(rng.integers(0, 256, (n_postal, 32), dtype=np.uint8))
    postal = np.where(rng.random(n) < p.default_postal_share, 0, rng.integers(0, n_postal, n))

    online = rng.beta(*p.online_share_beta, n)
    return Customers(
        hex_id=hex_id, segment=segment, cluster_w=cluster_w, age=age, fn=fn, active=active, club=club,
        news=news, postal=postal, postal_hex=postal_hex, online=online,
    )
