"""A deterministic synthetic shop: catalog, queries, graded judgements, users and sessions.

Everything is drawn from one seeded `numpy.random.Generator`, so `generate(scale, seed)`
returns identical tables for identical arguments.

How it is built
- A category tree of 40 leaves under 10 departments. Each leaf has its own nouns and
  synonyms (sofa/couch/settee, tv/television, sneakers/trainers), the attributes that
  apply to it (colors, materials, sizes) and a price range.
- Invented brands (120 at demo scale), each selling in 1-3 leaves of one department at a
  price tier (budget/mid/premium); products draw a brand from their leaf, Zipf-weighted.
- Queries come from attribute intents: a leaf noun, optionally with color, material,
  brand and size; then noise: synonyms, typos (swapped, dropped or doubled characters),
  shuffled word order and bare partial queries ("sofa"). Strings are deduplicated.
- Relevance comes from the intent and the catalog attributes only: 3 = the intent's leaf
  and every stated attribute matches; 2 = the leaf and at least half of the stated
  attributes; 1 = the leaf with mostly conflicting attributes, or a sibling leaf under
  the same parent ("Furniture > Living Room": sofas vs armchairs); 0 = anything else.
  Every product graded >= 1 is judged (at most 200 per query, 3s first, then 2s, then
  1s), plus 20 sampled grade-0 products.
- Users prefer 2-3 leaves, one favourite brand in each (big brands have more fans) and a
  price band.
- A session is one user issuing one query (80% from a preferred leaf) and being shown the
  top 10 judged products of a noisy "production" ranker (grade + Gaussian noise). Clicks
  follow the position-based examination model, P(click) = examination(position) *
  attractiveness(grade, brand match, price-band match) * the product's own appeal
  (lognormal, mean 1); add-to-cart and purchase follow clicks with probabilities that
  rise with brand and price-band match, so a user's earlier sessions predict what they
  buy later.
- Shopping missions: 40% of a user's sessions repeat their previous query, and a product
  they clicked in an earlier session is twice as attractive and likelier to be carted.
  Users have repeat sessions spread over 30 days, and event splits are by session time
  (80/10/10).
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from shoprank.contract import ArtifactPaths
from shoprank.data.datasets import (
    CATEGORY_SEPARATOR,
    EVENT_TYPES,
    IN_STOCK,
    LIST_SEPARATOR,
    PRICE_BANDS,
    SPLITS,
    ShopData,
    save,
    split_by_key,
    validate,
)


# ---------------------------------------------------------------------------------------
# Scales
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    """Sizes of one generated shop. Events come out at roughly 11 per session."""

    products: int
    queries: int
    users: int
    sessions: int
    brands: int = 120
    impressions: int = 10  # products shown per session (positions 0..impressions-1)
    max_judged: int = 200  # cap on judgements graded >= 1 per query
    negatives: int = 20  # sampled grade-0 judgements per query


SCALES: dict[str, Scale] = {
    "tiny": Scale(products=300, queries=60, users=50, sessions=300, brands=60),
    # 20,000 sessions x 10 impressions alone make 200,000 events.
    "demo": Scale(products=20_000, queries=2_000, users=5_000, sessions=20_000),
    "full": Scale(products=100_000, queries=10_000, users=25_000, sessions=100_000, brands=160),
}

# 2024-03-01 00:00:00 UTC; sessions fall in the 30 days after it.
START_TIME = 1_709_251_200
DAYS = 30


# ---------------------------------------------------------------------------------------
# The category tree
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Leaf:
    """One leaf category with what a product and a query in it can say."""

    path: str
    nouns: tuple[str, ...]  # query nouns, canonical first
    title_noun: str
    colors: tuple[str, ...]
    materials: tuple[str, ...]
    sizes: tuple[str, ...]
    price: tuple[float, float]
    features: tuple[str, ...]
    benefit: str

    @property
    def parent(self) -> str:
        return self.path.rsplit(CATEGORY_SEPARATOR, 1)[0]

    @property
    def department(self) -> str:
        return self.path.split(CATEGORY_SEPARATOR, 1)[0]


_FURN_COLORS = ("grey", "beige", "navy", "green", "black", "brown", "cream")
_WOOD_COLORS = ("natural", "white", "black", "grey", "dark brown")
_TECH_COLORS = ("black", "silver", "white", "grey", "blue")
_CLOTH_COLORS = ("black", "white", "navy", "grey", "red", "green", "blue", "beige", "pink")
_SHOE_COLORS = ("black", "white", "grey", "navy", "red", "blue")
_KITCHEN_COLORS = ("black", "silver", "red", "white", "cream")
_CLOTH_SIZES = ("XS", "S", "M", "L", "XL")
_SHOE_SIZES = ("UK 6", "UK 7", "UK 8", "UK 9", "UK 10", "UK 11")


def _leaf(path, nouns, title, colors, materials, sizes, price, features, benefit) -> Leaf:
    return Leaf(
        path,
        tuple(nouns),
        title,
        tuple(colors),
        tuple(materials),
        tuple(sizes),
        price,
        tuple(features),
        benefit,
    )


LEAVES: tuple[Leaf, ...] = (
    _leaf("Furniture > Living Room > Sofas", ["sofa", "couch", "settee"], "Sofa",
          _FURN_COLORS, ["velvet", "linen", "leather", "boucle"],
          ["2-Seat", "3-Seat", "Corner"], (299, 2499),
          ["deep foam-filled seat cushions", "a solid hardwood frame", "removable covers",
           "tapered oak legs"], "brings relaxed comfort to any living room"),
    _leaf("Furniture > Living Room > Armchairs", ["armchair", "accent chair", "lounge chair"],
          "Armchair", _FURN_COLORS, ["velvet", "linen", "leather", "rattan"], [], (119, 899),
          ["a high supportive back", "sprung seat cushions", "wide padded arms"],
          "makes a cosy reading corner"),
    _leaf("Furniture > Living Room > Coffee Tables", ["coffee table", "cocktail table"],
          "Coffee Table", _WOOD_COLORS, ["oak", "walnut", "glass", "marble"],
          ["Round", "Rectangular"], (79, 699),
          ["a lower storage shelf", "a scratch-resistant top", "a hidden drawer"],
          "anchors your living space"),
    _leaf("Furniture > Bedroom > Beds", ["bed", "bed frame", "bedstead"], "Bed Frame",
          _FURN_COLORS, ["oak", "pine", "metal", "velvet"], ["Single", "Double", "King"],
          (149, 1499), ["a slatted base", "under-bed storage drawers", "a padded headboard"],
          "sets the tone for a restful bedroom"),
    _leaf("Furniture > Bedroom > Mattresses", ["mattress"], "Mattress", [],
          ["memory foam", "latex", "pocket spring", "hybrid"], ["Single", "Double", "King"],
          (129, 1299), ["a breathable quilted cover", "seven comfort zones",
                        "edge-to-edge support"], "gives you deeper, cooler sleep"),
    _leaf("Furniture > Office > Desks", ["desk", "writing desk", "computer desk"], "Desk",
          _WOOD_COLORS, ["oak", "walnut", "metal", "glass"], ["100cm", "120cm", "140cm"],
          (89, 899), ["cable management", "a sturdy steel frame", "two storage drawers"],
          "keeps your home office organised"),
    _leaf("Furniture > Office > Office Chairs", ["office chair", "desk chair", "task chair"],
          "Office Chair", ("black", "grey", "white", "blue"), ["mesh", "leather", "fabric"], [],
          (69, 999), ["adjustable lumbar support", "4D armrests", "a synchro-tilt mechanism"],
          "keeps you comfortable through long workdays"),
    _leaf("Electronics > TV & Audio > Televisions", ["tv", "television", "smart tv"],
          "4K Smart TV", ("black", "silver"), [], ["43-inch", "55-inch", "65-inch", "75-inch"],
          (249, 2999), ["HDR10+ support", "a 120Hz panel", "built-in streaming apps",
                        "Dolby Atmos sound"], "turns movie night into an event"),
    _leaf("Electronics > TV & Audio > Headphones", ["headphones", "earphones", "headset"],
          "Wireless Headphones", _TECH_COLORS, [], [], (19, 449),
          ["active noise cancelling", "30-hour battery life", "multipoint Bluetooth"],
          "let you focus on the music"),
    _leaf("Electronics > TV & Audio > Speakers", ["speaker", "bluetooth speaker", "soundbar"],
          "Bluetooth Speaker", _TECH_COLORS, ["fabric", "aluminium", "plastic"], [],
          (25, 699), ["a waterproof IP67 body", "360-degree sound", "a built-in microphone"],
          "fills the room with rich sound"),
    _leaf("Electronics > Computers > Laptops", ["laptop", "notebook", "ultrabook"], "Laptop",
          ("silver", "grey", "black"), ["aluminium", "plastic"],
          ["13-inch", "14-inch", "15-inch", "16-inch"], (349, 2999),
          ["a backlit keyboard", "all-day battery life", "a fast SSD", "a Full HD webcam"],
          "keeps up with work and play"),
    _leaf("Electronics > Computers > Monitors", ["monitor", "computer screen", "display"],
          "Monitor", ("black", "white", "silver"), [], ["24-inch", "27-inch", "32-inch"],
          (99, 1199), ["an IPS panel", "a height-adjustable stand", "USB-C connectivity"],
          "gives you room to work"),
    _leaf("Electronics > Phones > Smartphones", ["smartphone", "phone", "mobile phone"],
          "Smartphone", ("black", "white", "blue", "green", "silver"), [],
          ["128GB", "256GB", "512GB"], (149, 1499),
          ["a triple camera", "5G connectivity", "fast wireless charging"],
          "keeps you connected all day"),
    _leaf("Clothing > Women > Dresses", ["dress", "sundress", "midi dress"], "Dress",
          _CLOTH_COLORS, ["cotton", "linen", "silk", "viscose"], _CLOTH_SIZES, (19, 249),
          ["a flattering wrap waist", "hidden side pockets", "a relaxed fit"],
          "works from day to evening"),
    _leaf("Clothing > Men > T-Shirts", ["t-shirt", "tee", "tshirt"], "T-Shirt",
          _CLOTH_COLORS, ["cotton", "organic cotton", "linen"], _CLOTH_SIZES, (7, 59),
          ["a crew neck", "a regular fit", "pre-shrunk fabric"], "is an everyday essential"),
    _leaf("Clothing > Men > Jeans", ["jeans", "denim jeans", "denims"], "Jeans",
          ("blue", "black", "grey", "light blue"), ["denim", "stretch denim"],
          ["W30", "W32", "W34", "W36"], (25, 179),
          ["a slim fit", "five pockets", "a button fly"], "go with everything"),
    _leaf("Clothing > Outerwear > Jackets", ["jacket", "coat", "parka"], "Jacket",
          _CLOTH_COLORS, ["down", "wool", "leather", "nylon"], _CLOTH_SIZES, (39, 499),
          ["a detachable hood", "a water-repellent finish", "zipped pockets"],
          "keeps the weather out"),
    _leaf("Clothing > Knitwear > Sweaters", ["sweater", "jumper", "pullover"], "Sweater",
          _CLOTH_COLORS, ["wool", "cashmere", "cotton", "merino"], _CLOTH_SIZES, (19, 299),
          ["ribbed cuffs", "a crew neck", "a soft brushed finish"],
          "is made for colder days"),
    _leaf("Shoes > Trainers > Running Shoes", ["running shoes", "running trainers", "runners"],
          "Running Shoes", _SHOE_COLORS, ["mesh", "knit"], _SHOE_SIZES, (39, 219),
          ["a responsive foam midsole", "a grippy rubber outsole", "a breathable upper"],
          "help you go the extra mile"),
    _leaf("Shoes > Trainers > Sneakers", ["sneakers", "trainers", "casual shoes"], "Sneakers",
          _SHOE_COLORS, ["leather", "canvas", "suede"], _SHOE_SIZES, (29, 189),
          ["a cushioned insole", "a vulcanised sole", "classic low-top styling"],
          "finish any casual outfit"),
    _leaf("Shoes > Boots > Boots", ["boots", "ankle boots", "chelsea boots"], "Boots",
          ("black", "brown", "tan", "grey"), ["leather", "suede"], _SHOE_SIZES, (49, 299),
          ["elastic side panels", "a pull-on tab", "a lug sole"], "stand up to any season"),
    _leaf("Shoes > Summer Shoes > Sandals", ["sandals", "sliders", "flip flops"], "Sandals",
          ("black", "brown", "white", "tan"), ["leather", "rubber", "cork"], _SHOE_SIZES,
          (12, 149), ["a contoured footbed", "adjustable straps", "a lightweight sole"],
          "are ready for warm days"),
    _leaf("Kitchen > Cookware > Frying Pans", ["frying pan", "skillet", "fry pan"],
          "Frying Pan", ("black", "silver", "red", "blue"),
          ["cast iron", "stainless steel", "non-stick aluminium", "carbon steel"],
          ["20cm", "24cm", "28cm"], (12, 199),
          ["an induction-ready base", "a stay-cool handle", "an oven-safe build"],
          "makes everyday cooking easy"),
    _leaf("Kitchen > Appliances > Coffee Machines", ["coffee machine", "coffee maker",
                                                     "espresso machine"],
          "Coffee Machine", _KITCHEN_COLORS, ["stainless steel", "plastic"], [], (39, 1299),
          ["a 15-bar pump", "a milk frother", "a removable water tank"],
          "brews café-quality coffee at home"),
    _leaf("Kitchen > Appliances > Blenders", ["blender", "smoothie maker", "food blender"],
          "Blender", _KITCHEN_COLORS, ["glass", "plastic", "stainless steel"],
          ["0.6L", "1.5L", "2L"], (19, 499),
          ["a 1200W motor", "six speed settings", "a pulse function"],
          "whips up smoothies in seconds"),
    _leaf("Kitchen > Appliances > Kettles", ["kettle", "electric kettle"], "Kettle",
          _KITCHEN_COLORS, ["stainless steel", "glass", "plastic"], ["1L", "1.7L"], (15, 149),
          ["rapid boil", "a limescale filter", "a 360-degree base"],
          "has your tea ready in minutes"),
    _leaf("Sports > Fitness > Yoga Mats", ["yoga mat", "exercise mat", "fitness mat"],
          "Yoga Mat", ("purple", "black", "blue", "green", "pink", "grey"),
          ["TPE", "rubber", "cork"], ["4mm", "6mm", "8mm"], (12, 119),
          ["a non-slip surface", "alignment lines", "a carry strap"],
          "supports every pose"),
    _leaf("Sports > Fitness > Dumbbells", ["dumbbells", "hand weights", "free weights"],
          "Dumbbells", ("black", "grey", "blue", "pink"), ["cast iron", "neoprene", "rubber"],
          ["2kg", "5kg", "10kg", "20kg"], (9, 299),
          ["a knurled grip", "hexagonal heads that don't roll", "a pair set"],
          "make strength training at home simple"),
    _leaf("Sports > Outdoor > Bikes", ["bike", "bicycle", "road bike"], "Bike",
          ("black", "white", "red", "blue", "green"), ["aluminium", "carbon", "steel"],
          ["S", "M", "L"], (199, 3999),
          ["hydraulic disc brakes", "a 21-speed drivetrain", "puncture-resistant tyres"],
          "is built for the open road"),
    _leaf("Sports > Outdoor > Tents", ["tent", "camping tent", "dome tent"], "Tent",
          ("green", "grey", "orange", "blue"), ["nylon", "polyester", "canvas"],
          ["2-Person", "4-Person", "6-Person"], (39, 799),
          ["a waterproof flysheet", "colour-coded poles", "a sewn-in groundsheet"],
          "pitches in minutes"),
    _leaf("Beauty > Skincare > Moisturisers", ["moisturiser", "moisturizer", "face cream"],
          "Moisturiser", [], [], ["50ml", "100ml"], (6, 129),
          ["hyaluronic acid", "SPF 30", "a fragrance-free formula"],
          "leaves skin soft and hydrated"),
    _leaf("Beauty > Fragrance > Perfume", ["perfume", "fragrance", "eau de parfum"],
          "Eau de Parfum", [], [], ["30ml", "50ml", "100ml"], (15, 249),
          ["notes of bergamot and cedar", "a long-lasting trail", "a refillable bottle"],
          "makes a lasting impression"),
    _leaf("Toys > Building > Building Blocks", ["building blocks", "construction set",
                                                "building bricks"],
          "Building Set", [], ["plastic", "wood"], ["100-Piece", "500-Piece", "1000-Piece"],
          (9, 199), ["step-by-step instructions", "compatible bricks", "a storage tub"],
          "sparks hours of creative play"),
    _leaf("Toys > Plush > Soft Toys", ["teddy bear", "soft toy", "plush toy", "stuffed animal"],
          "Teddy Bear", ("brown", "cream", "pink", "grey", "white"), ["plush", "cotton"],
          ["20cm", "35cm", "60cm"], (7, 79),
          ["embroidered eyes", "a machine-washable body", "extra-soft fur"],
          "is the perfect cuddle companion"),
    _leaf("Garden > Outdoor Furniture > Patio Sets", ["patio set", "garden furniture set",
                                                      "outdoor dining set"],
          "Patio Set", ("grey", "brown", "black", "natural"), ["rattan", "teak", "aluminium"],
          ["2-Seater", "4-Seater", "6-Seater"], (149, 2499),
          ["weather-resistant cushions", "a tempered glass table top", "stackable chairs"],
          "makes summer evenings outside easy"),
    _leaf("Garden > Garden Tools > Lawn Mowers", ["lawn mower", "lawnmower", "mower"],
          "Lawn Mower", ("green", "red", "orange", "black"), [], ["32cm", "37cm", "42cm"],
          (79, 899), ["a cordless battery", "a 40-litre grass box", "height adjustment"],
          "keeps your lawn neat with little effort"),
    _leaf("Garden > Pots & Planters > Planters", ["planter", "plant pot", "flower pot"],
          "Planter", ("white", "grey", "blue", "black", "green"),
          ["terracotta", "ceramic", "concrete", "plastic"], ["Small", "Medium", "Large"],
          (5, 199), ["a drainage hole", "a frost-resistant glaze", "a matching saucer"],
          "shows off your plants"),
    _leaf("Home > Lighting > Floor Lamps", ["floor lamp", "standing lamp", "standard lamp"],
          "Floor Lamp", ("black", "white", "gold", "grey"), ["metal", "wood", "brass"], [],
          (29, 499), ["an adjustable arm", "a linen shade", "a foot switch"],
          "adds a warm glow to any corner"),
    _leaf("Home > Lighting > Table Lamps", ["table lamp", "bedside lamp", "desk lamp"],
          "Table Lamp", ("black", "white", "gold", "green", "grey"),
          ["ceramic", "metal", "glass"], [], (15, 249),
          ["a fabric drum shade", "a dimmable bulb", "a weighted base"],
          "softens the light in the evening"),
    _leaf("Home > Textiles > Rugs", ["rug", "area rug", "carpet"], "Rug",
          ("grey", "beige", "navy", "green", "cream", "multicolour"),
          ["wool", "jute", "cotton", "polypropylene"], ["120x170cm", "160x230cm", "200x290cm"],
          (29, 899), ["a low pile", "a non-slip backing", "hand-tufted craftsmanship"],
          "pulls a room together"),
)  # fmt: skip

_SERIES = (
    "Aria", "Luna", "Nova", "Oslo", "Milo", "Vera", "Atlas", "Echo", "Flora", "Haven",
    "Iris", "Juno", "Kai", "Lotus", "Mesa", "Nord", "Opal", "Pico", "Rhea", "Sage",
    "Terra", "Uma", "Vela", "Willow", "Zara", "Astra", "Brio", "Cleo", "Dune", "Elba",
)  # fmt: skip
_BRAND_PREFIXES = (
    "Nord", "Lum", "Ast", "Bel", "Cor", "Dal", "El", "Fen", "Gal", "Hal", "Ist", "Jun",
    "Kal", "Lin", "Mar", "Nov", "Or", "Pal", "Quin", "Ros", "Sol", "Tor", "Ul", "Vel",
    "Wil", "Xan", "Yor", "Zen", "Bra", "Cal",
)  # fmt: skip
_BRAND_SUFFIXES = ("vik", "ora", "ex", "ia", "ton", "ford", "ly", "mark", "berg", "ani", "io", "en")
# {this}/{it} agree with plural nouns ("these sandals ... they").
_OPENERS = (
    "The {brand} {series} {noun} {benefit}.",
    "Meet the {series} {noun} from {brand}: {it} {benefit}.",
    "Designed by {brand}, {this} {noun} {benefit}.",
    "{This} {series} {noun} by {brand} {benefit}.",
)
_CLOSERS = (
    "Easy to care for and built to last.",
    "Backed by a two-year warranty.",
    "Free delivery and 30-day returns.",
    "Thoughtfully designed and rigorously tested.",
    "A customer favourite, rated highly for quality.",
    "Packaged in recycled materials.",
)
_TIER_BANDS = {0: (0.0, 0.4), 1: (0.3, 0.7), 2: (0.6, 1.0)}  # position in the leaf's range
# Lexical query mix: shares of the queries that name a model number, or a part/feature
# the description mentions; every query stating a size writes it the way shoppers do.
_CODE_QUERIES = 0.15
_FEATURE_QUERIES = 0.10
_CODE_IN_TITLE = 0.6  # else the model number is only in the description
_UNIT_SPELLINGS = {
    "inch": ("-inch", " inch", "in", '"', " in"),
    "cm": ("cm", " cm"),
    "l": ("l", " l", " litre", "ltr"),
    "ml": ("ml", " ml"),
    "kg": ("kg", " kg", " kilo"),
    "mm": ("mm", " mm"),
    "gb": ("gb", " gb"),
}


def brand_names(n: int) -> list[str]:
    """`n` invented brand names (at most 360), the same for every seed."""
    combos = [p + s for p in _BRAND_PREFIXES for s in _BRAND_SUFFIXES]
    if n > len(combos):
        raise ValueError(f"at most {len(combos)} brands, asked for {n}")
    order = np.random.default_rng(20240301).permutation(len(combos))
    return [combos[i] for i in order[:n]]


# ---------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------
@dataclass
class _Catalog:
    frame: pd.DataFrame
    leaf: np.ndarray  # leaf index per product row
    brand: np.ndarray  # brand index
    color: np.ndarray  # index into the leaf's colors, -1 when not applicable
    material: np.ndarray
    size: np.ndarray
    band: np.ndarray  # 0 budget, 1 mid, 2 premium (position within the leaf's price range)
    brands: list[str]
    leaf_brands: list[np.ndarray]
    series: np.ndarray  # index into _SERIES
    features: np.ndarray  # (n, 2) the two leaf features each description names
    codes: list[str]  # model number per product, unique ("NO-4521B")

    @cached_property
    def leaf_rows(self) -> list[np.ndarray]:
        """Product rows of each leaf, in LEAVES order."""
        return [np.flatnonzero(self.leaf == i) for i in range(len(LEAVES))]


def _assign_brands(rng: np.random.Generator, n_brands: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Brand tiers and, per leaf, the brands selling there (>= 3 each, one department)."""
    departments = sorted({leaf.department for leaf in LEAVES})
    dept_leaves = {d: [i for i, lf in enumerate(LEAVES) if lf.department == d] for d in departments}
    tiers = rng.choice(3, size=n_brands, p=[0.35, 0.45, 0.2])
    sells: list[list[int]] = [[] for _ in LEAVES]
    weights = np.array([len(dept_leaves[d]) for d in departments], dtype=float)
    for b in range(n_brands):
        dept = departments[rng.choice(len(departments), p=weights / weights.sum())]
        options = dept_leaves[dept]
        k = min(len(options), int(rng.integers(1, 4)))
        for leaf in rng.choice(options, size=k, replace=False):
            sells[int(leaf)].append(b)
    for i, lf in enumerate(LEAVES):
        # Small brand counts can leave a leaf thin; borrow brands of the same department.
        pool = [b for j in dept_leaves[lf.department] for b in sells[j] if b not in sells[i]]
        pool = sorted(set(pool)) or [b for b in range(n_brands) if b not in sells[i]]
        while len(sells[i]) < 3 and pool:
            sells[i].append(pool.pop(int(rng.integers(len(pool)))))
    return tiers, [np.array(sorted(s)) for s in sells]


def _model_codes(rng: np.random.Generator, brands: list[str]) -> list[str]:
    """One unique model number per product: brand initials, four digits, a letter."""
    picks = rng.choice(9000 * 26, size=len(brands), replace=False)
    return [
        f"{b[:2].upper()}-{1000 + v // 26}{chr(ord('A') + v % 26)}"
        for b, v in zip(brands, picks, strict=True)
    ]


# Long on purpose: one pass that draws every attribute of every product from one RNG in a
# fixed order; split, the draws would move and the deterministic shop would change.
def _make_catalog(
    rng: np.random.Generator, scale: Scale, popularity: np.ndarray, lexical: np.random.Generator
) -> _Catalog:
    brands = brand_names(scale.brands)
    tiers, leaf_brands = _assign_brands(rng, scale.brands)
    n_leaves = len(LEAVES)
    floor = min(3, scale.products // n_leaves)
    counts = floor + rng.multinomial(scale.products - floor * n_leaves, popularity)

    leaf_of = np.repeat(np.arange(n_leaves), counts)
    n = len(leaf_of)
    brand = np.empty(n, dtype=np.int64)
    color = np.full(n, -1, dtype=np.int64)
    material = np.full(n, -1, dtype=np.int64)
    size = np.full(n, -1, dtype=np.int64)
    price = np.empty(n)
    for i, lf in enumerate(LEAVES):
        rows = np.flatnonzero(leaf_of == i)
        m = len(rows)
        options = leaf_brands[i]
        zipf = 1.0 / np.arange(1, len(options) + 1) ** 0.8
        # A different brand leads each leaf, not always the lowest-numbered one.
        zipf = zipf[rng.permutation(len(options))]
        brand[rows] = rng.choice(options, size=m, p=zipf / zipf.sum())
        if lf.colors:
            color[rows] = rng.integers(len(lf.colors), size=m)
        if lf.materials:
            material[rows] = rng.integers(len(lf.materials), size=m)
        if lf.sizes:
            size[rows] = rng.integers(len(lf.sizes), size=m)
        lo_q = np.array([_TIER_BANDS[t][0] for t in tiers[brand[rows]]])
        hi_q = np.array([_TIER_BANDS[t][1] for t in tiers[brand[rows]]])
        u = lo_q + (hi_q - lo_q) * rng.random(m)
        lo, hi = lf.price
        price[rows] = np.floor(lo * (hi / lo) ** u) + 0.99
    # Where the price sits in its leaf's range: what a shopper's price band is about.
    lo = np.array([lf.price[0] for lf in LEAVES])[leaf_of]
    hi = np.array([lf.price[1] for lf in LEAVES])[leaf_of]
    pos = np.log(price / lo) / np.log(hi / lo)
    band = np.digitize(pos, [1 / 3, 2 / 3])

    # Shuffle so product ids are not grouped by leaf.
    perm = rng.permutation(n)
    leaf_of, brand, color, material, size, price, band = (
        a[perm] for a in (leaf_of, brand, color, material, size, price, band)
    )

    series = rng.integers(len(_SERIES), size=n)
    layout = rng.random(n)
    opener = rng.integers(len(_OPENERS), size=n)
    closer = rng.integers(len(_CLOSERS), size=n)
    feats = rng.random((n, 4))
    # Drawn from their own generator, so everything above stays what it was for a seed.
    codes = _model_codes(lexical, [brands[b] for b in brand])
    code_in_title = lexical.random(n) < _CODE_IN_TITLE
    features = np.zeros((n, 2), dtype=np.int64)
    titles, descriptions, categories = [], [], []
    colors_s, materials_s, sizes_s = [], [], []
    for r in range(n):
        lf = LEAVES[leaf_of[r]]
        b = brands[brand[r]]
        c = lf.colors[color[r]] if color[r] >= 0 else ""
        mt = lf.materials[material[r]] if material[r] >= 0 else ""
        sz = lf.sizes[size[r]] if size[r] >= 0 else ""
        s = _SERIES[series[r]]
        words = [b, s, c.title(), mt.title() if mt.islower() else mt]
        if layout[r] < 0.7:
            title = " ".join(w for w in [*words, sz, lf.title_noun] if w)
        else:
            title = " ".join(w for w in [*words, lf.title_noun] if w) + (f", {sz}" if sz else "")
        noun = lf.title_noun.lower()
        plural = noun.endswith("s")  # Sandals, Jeans, Dumbbells ... (benefits agree)
        this = "these" if plural else "this"
        sentences = [
            _OPENERS[opener[r]].format(
                brand=b,
                series=s,
                noun=noun,
                benefit=lf.benefit,
                it="they" if plural else "it",
                this=this,
                This=this.capitalize(),
            )
        ]
        if c and mt:
            sentences.append(f"Made from {mt} in a {c} finish.")
        elif mt:
            sentences.append(f"Made from {mt}.")
        elif c:
            sentences.append(f"Finished in {c}.")
        features[r] = np.argsort(feats[r, : len(lf.features)])[:2]
        f = [lf.features[k] for k in features[r]]
        sentences.append(f"It features {f[0]} and {f[1]}.")
        if sz:
            sentences.append(f"Size: {sz}.")
        sentences.append(f"Model {codes[r]}.")
        sentences.append(_CLOSERS[closer[r]])
        if code_in_title[r]:
            title = f"{title} {codes[r]}"
        titles.append(title)
        descriptions.append(" ".join(sentences))
        categories.append(lf.path)
        colors_s.append(c)
        materials_s.append(mt)
        sizes_s.append(sz)

    frame = pd.DataFrame(
        {
            "product_id": np.arange(100_001, 100_001 + n, dtype=np.int64),
            "title": titles,
            "description": descriptions,
            "category": categories,
            "brand": [brands[b] for b in brand],
            "color": colors_s,
            "material": materials_s,
            "size": sizes_s,
            "price": price.astype(np.float64),
        }
    )
    # About 8% out of stock, from the id alone (the random streams stay as they were).
    frame[IN_STOCK] = (frame["product_id"].to_numpy() * 2_654_435_761 % 100) >= 8
    return _Catalog(
        frame,
        leaf_of,
        brand,
        color,
        material,
        size,
        band,
        brands,
        leaf_brands,
        series,
        features,
        codes,
    )


def _typo(word: str, kind: float, where: float) -> str:
    """Swap two neighbouring characters, drop one or double one."""
    i = int(where * (len(word) - 1))
    if kind < 0.45:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if kind < 0.8:
        return word[:i] + word[i + 1 :]
    return word[: i + 1] + word[i] + word[i + 1 :]


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)-?(inch|cm|l|ml|kg|mm|gb)$", re.IGNORECASE)
# Intent kinds: what a query asks for, and so how it is judged.
ATTRIBUTE, CODE, FEATURE = 0, 1, 2


def _spell_size(size: str, lexical: np.random.Generator) -> str:
    """A size the way a shopper types it: "55-inch" as "55 inch", "55in", '55"'..."""
    match = _SIZE.match(size)
    if match is None:
        return size.lower()
    number, unit = match.group(1), match.group(2).lower()
    spellings = _UNIT_SPELLINGS[unit]
    return number + spellings[int(lexical.integers(len(spellings)))]


def _code_query(cat: _Catalog, row: int, lexical: np.random.Generator) -> str:
    """A model-number query for product `row`: the code as typed, maybe with brand/noun."""
    code = cat.codes[row].lower()
    prefix, number = code.split("-")
    typed = (code, prefix + number, f"{prefix} {number}")[int(lexical.integers(3))]
    lf = LEAVES[cat.leaf[row]]
    brand = cat.brands[cat.brand[row]].lower()
    form = int(lexical.integers(3))
    return (typed, f"{brand} {typed}", f"{brand} {lf.nouns[0]} {typed}")[form]


def _feature_query(leaf: int, feature: int, lexical: np.random.Generator) -> str:
    """A part/feature query: "bike hydraulic disc brakes", "kettle with a limescale filter"."""
    lf = LEAVES[leaf]
    words = lf.features[feature].split()
    phrase = " ".join(words[1:] if words[0] in ("a", "an") else words)
    noun = lf.nouns[int(lexical.integers(len(lf.nouns)))]
    form = int(lexical.integers(3))
    return (f"{noun} {phrase}", f"{noun} with {phrase}", f"{phrase} {noun}")[form]


# Long on purpose: the query kinds are drawn from one RNG in a fixed order (the
# deterministic shop depends on it) and share the dedup state.
def _make_queries(
    rng: np.random.Generator,
    scale: Scale,
    cat: _Catalog,
    popularity: np.ndarray,
    lexical: np.random.Generator,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Deduplicated noisy queries and, per query, the intent they were made from.

    Most ask for a leaf with attributes (colour, material, brand, size); _CODE_QUERIES of
    them name one product's model number and _FEATURE_QUERIES a part or feature that
    product descriptions mention: the lexical queries where exact tokens decide.
    """
    n_code = round(_CODE_QUERIES * scale.queries)
    n_feature = round(_FEATURE_QUERIES * scale.queries)
    n_attribute = scale.queries - n_code - n_feature
    attempts = max(50 * scale.queries, 1000)
    leaf_draw = rng.choice(len(LEAVES), size=attempts, p=popularity)
    u = rng.random((attempts, 16))
    seen: set[str] = set()
    texts: list[str] = []
    # (kind, leaf, color, material, brand, size, product row, feature)
    intents: list[tuple[int, ...]] = []
    for a in range(attempts):
        if len(texts) >= n_attribute:
            break
        i = int(leaf_draw[a])
        lf, v = LEAVES[i], u[a]
        color = material = brand = size = -1
        if v[0] >= 0.2:  # 20% are bare partial queries ("sofa")
            if lf.colors and v[1] < 0.45:
                color = int(v[2] * len(lf.colors))
            if lf.materials and v[3] < 0.3:
                material = int(v[4] * len(lf.materials))
            if v[5] < 0.25:
                options = cat.leaf_brands[i]
                brand = int(options[int(v[6] * len(options))])
            if lf.sizes and v[7] < 0.25:
                size = int(v[8] * len(lf.sizes))
        # Canonical noun half of the time, a synonym otherwise.
        noun = (
            lf.nouns[0]
            if v[9] < 0.5 or len(lf.nouns) == 1
            else lf.nouns[1 + int(v[10] * (len(lf.nouns) - 1))]
        )
        words = []
        if brand >= 0:
            words.append(cat.brands[brand].lower())
        if color >= 0:
            words.append(lf.colors[color])
        if material >= 0:
            words.append(lf.materials[material].lower())
        words.extend(noun.split())
        if size >= 0:
            words.append(_spell_size(lf.sizes[size], lexical))
        if len(words) > 1 and v[11] < 0.1:
            words = [words[k] for k in rng.permutation(len(words))]
        if v[12] < 0.12:
            long = [k for k, w in enumerate(words) if len(w) >= 4]
            if long:
                k = long[int(v[13] * len(long))]
                words[k] = _typo(words[k], v[14], v[15])
        text = " ".join(words)
        if text in seen:
            continue
        seen.add(text)
        texts.append(text)
        intents.append((ATTRIBUTE, i, color, material, brand, size, -1, -1))

    n = len(cat.leaf)
    for row in lexical.permutation(n)[: 3 * n_code]:
        if len(texts) >= n_attribute + n_code:
            break
        text = _code_query(cat, int(row), lexical)
        if text not in seen:
            seen.add(text)
            texts.append(text)
            intents.append((CODE, int(cat.leaf[row]), -1, -1, -1, -1, int(row), -1))
    feature_leaves = lexical.choice(len(LEAVES), size=20 * max(n_feature, 1), p=popularity)
    for leaf in feature_leaves:
        if len(texts) >= n_attribute + n_code + n_feature:
            break
        feature = int(lexical.integers(len(LEAVES[leaf].features)))
        text = _feature_query(int(leaf), feature, lexical)
        if text not in seen:
            seen.add(text)
            texts.append(text)
            intents.append((FEATURE, int(leaf), -1, -1, -1, -1, -1, feature))

    query_ids = np.arange(1, len(texts) + 1, dtype=np.int64)
    split = split_by_key(texts, seed=int(rng.integers(2**31)))
    queries = pd.DataFrame({"query_id": query_ids, "query": texts, "split": split})
    arr = np.array(intents, dtype=np.int64).reshape(-1, 8)
    intent = pd.DataFrame(
        {
            "query_id": query_ids,
            "kind": arr[:, 0],
            "leaf": arr[:, 1],
            "color_idx": arr[:, 2],
            "material_idx": arr[:, 3],
            "brand_idx": arr[:, 4],
            "size_idx": arr[:, 5],
            "product_row": arr[:, 6],
            "feature_idx": arr[:, 7],
        }
    )
    return queries, intent


KIND_NAMES = {ATTRIBUTE: "attribute", CODE: "code", FEATURE: "feature"}


def _intent_strings(intent: pd.DataFrame, cat: _Catalog) -> pd.DataFrame:
    """The intent table in catalog terms ("" = not stated), for tests and analysis.

    kind is "attribute", "code" (target_id is the product whose model number the query
    names) or "feature" (feature is the part/feature phrase the query asks for)."""

    def pick(values: tuple[str, ...], idx: int) -> str:
        return values[idx] if idx >= 0 else ""

    product_ids = cat.frame["product_id"].to_numpy()
    rows = []
    for r in intent.itertuples(index=False):
        lf = LEAVES[r.leaf]
        rows.append(
            (
                r.query_id,
                KIND_NAMES[r.kind],
                lf.path,
                pick(lf.colors, r.color_idx),
                pick(lf.materials, r.material_idx),
                cat.brands[r.brand_idx] if r.brand_idx >= 0 else "",
                pick(lf.sizes, r.size_idx),
                int(product_ids[r.product_row]) if r.product_row >= 0 else -1,
                pick(lf.features, r.feature_idx),
            )
        )
    columns = [
        "query_id",
        "kind",
        "category",
        "color",
        "material",
        "brand",
        "size",
        "target_id",
        "feature",
    ]
    return pd.DataFrame(rows, columns=columns)


def _judge(
    rng: np.random.Generator, scale: Scale, cat: _Catalog, intent: pd.DataFrame, progress: bool
) -> tuple[pd.DataFrame, list[np.ndarray], list[np.ndarray]]:
    """Judgements per query plus, per query, the judged product rows and their grades."""
    n = len(cat.leaf)
    parents = [lf.parent for lf in LEAVES]
    leaf_rows = cat.leaf_rows
    parent_of_leaf = np.array([parents.index(p) for p in parents])
    parent_of_row = parent_of_leaf[cat.leaf]
    sibling_rows = [
        np.flatnonzero((parent_of_row == parent_of_leaf[i]) & (cat.leaf != i))
        for i in range(len(LEAVES))
    ]
    attrs = (cat.color, cat.material, cat.brand, cat.size)
    per_query_rows: list[np.ndarray] = []
    per_query_grades: list[np.ndarray] = []
    rows_iter = tqdm(
        intent.itertuples(index=False), total=len(intent), desc="judging", disable=not progress
    )
    for r in rows_iter:
        i = r.leaf
        same = leaf_rows[i]
        siblings = sibling_rows[i]
        if r.kind == CODE:
            # The named product; its series in other colours or sizes; the brand's others.
            p = r.product_row
            brand = cat.brand[same] == cat.brand[p]
            series = brand & (cat.series[same] == cat.series[p])
            g_same = np.where(same == p, 3, np.where(series, 2, np.where(brand, 1, 0)))
            siblings = siblings[:0]  # another category is no answer to a model number
        elif r.kind == FEATURE:
            has = (cat.features[same] == r.feature_idx).any(axis=1)
            g_same = np.where(has, 3, 1)
        else:
            stated = 0
            matched_arr = np.zeros(len(same), dtype=np.int64)
            wanted = (r.color_idx, r.material_idx, r.brand_idx, r.size_idx)
            for arr, want in zip(attrs, wanted, strict=True):
                if want >= 0:
                    stated += 1
                    matched_arr += arr[same] == want
            if stated == 0:
                g_same = np.full(len(same), 3, dtype=np.int64)
            else:
                g_same = np.where(
                    matched_arr == stated, 3, np.where(2 * matched_arr >= stated, 2, 1)
                )
        g_same = g_same.astype(np.int64)
        chosen: list[np.ndarray] = []
        chosen_g: list[np.ndarray] = []
        budget = scale.max_judged
        tiers = [(same[g_same == g], g) for g in (3, 2)]
        tiers.append((np.concatenate([same[g_same == 1], siblings]), 1))
        for rows, g in tiers:
            if budget <= 0 or len(rows) == 0:
                continue
            take = rows if len(rows) <= budget else rng.choice(rows, size=budget, replace=False)
            chosen.append(take)
            chosen_g.append(np.full(len(take), g, dtype=np.int64))
            budget -= len(take)
        # Grade-0 negatives: anything outside the query's parent category.
        cand = rng.integers(n, size=3 * scale.negatives)
        cand = cand[parent_of_row[cand] != parent_of_leaf[i]]
        cand = pd.unique(cand)[: scale.negatives]
        chosen.append(cand)
        chosen_g.append(np.zeros(len(cand), dtype=np.int64))
        per_query_rows.append(np.concatenate(chosen))
        per_query_grades.append(np.concatenate(chosen_g))
    product_ids = cat.frame["product_id"].to_numpy()
    judgements = pd.DataFrame(
        {
            "query_id": np.repeat(
                intent["query_id"].to_numpy(np.int64), [len(r) for r in per_query_rows]
            ),
            "product_id": product_ids[np.concatenate(per_query_rows)],
            "relevance": np.concatenate(per_query_grades),
        }
    )
    return judgements, per_query_rows, per_query_grades


def _make_users(
    rng: np.random.Generator, scale: Scale, cat: _Catalog, popularity: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Users plus padded (-1) preferred-leaf and preferred-brand matrices and price bands."""
    u = scale.users
    pref_leaves = np.full((u, 3), -1, dtype=np.int64)
    pref_brands = np.full((u, 3), -1, dtype=np.int64)
    n_leaves = rng.integers(2, 4, size=u)
    bands = rng.choice(3, size=u, p=[0.35, 0.45, 0.2])
    cats, brs = [], []
    for k in range(u):
        leaves = rng.choice(len(LEAVES), size=n_leaves[k], replace=False, p=popularity)
        pref_leaves[k, : len(leaves)] = leaves
        # One favourite brand per preferred leaf ("Sony headphones, Nike running shoes"),
        # so that every leaf a shopper returns to has a brand they come back for; big
        # brands have more fans, in proportion to their share of the leaf's products.
        chosen = pd.unique(np.array([rng.choice(cat.brand[cat.leaf_rows[i]]) for i in leaves]))
        pref_brands[k, : len(chosen)] = chosen
        cats.append(LIST_SEPARATOR.join(LEAVES[i].path for i in leaves))
        brs.append(LIST_SEPARATOR.join(cat.brands[b] for b in chosen))
    users = pd.DataFrame(
        {
            "user_id": np.arange(1, u + 1, dtype=np.int64),
            "preferred_categories": cats,
            "preferred_brands": brs,
            "price_band": [PRICE_BANDS[b] for b in bands],
        }
    )
    return users, pref_leaves, pref_brands, bands


# Click model constants. Attractiveness by grade, then boosted by preference match and
# scaled by the product's own appeal.
_ATTRACT = np.array([0.02, 0.08, 0.25, 0.5])
_EXAMINATION_DECAY = 0.8  # examination(p) = (p + 1) ** -0.8: 1.0 at top, 0.16 at rank 10
_BRAND_LOYALTY = 1.5  # a favourite brand is (1 + this) times as attractive
_PRICE_FIT = 0.5  # a product in the shopper's price band is (1 + this) times as attractive
# Per-product appeal (photos, reviews, value for money), lognormal with mean 1: the same
# grade-3 sofa is not equally clickable in every listing. This is what item CTR learns.
_APPEAL_SIGMA = 0.6
# Shopping missions span sessions: a shopper often comes back to the same search days
# later, and is more likely to click and buy what they already looked at.
_MISSION_CONTINUE = 0.4  # P(a session repeats the shopper's previous query)
_REVISIT = 1.0  # a product clicked in an earlier session is (1 + this) times as attractive
_REVISIT_CART = 0.2  # ... and this much more likely to go in the basket


def _missions(rng: np.random.Generator, user: np.ndarray, by_shopper: np.ndarray) -> np.ndarray:
    """Per session, the session whose query it repeats (itself when it starts a mission);
    `by_shopper` orders the sessions by shopper, then start time."""
    source = np.arange(len(user))
    cont = rng.random(len(user)) < _MISSION_CONTINUE
    for prev, cur in itertools.pairwise(by_shopper):
        if cont[cur] and user[prev] == user[cur]:
            source[cur] = source[prev]
    return source


# Long on purpose: the session simulation is one loop over shoppers drawing from one RNG
# in a fixed order (the deterministic logs depend on it); its steps share that loop's state.
def _simulate_sessions(
    rng: np.random.Generator,
    scale: Scale,
    cat: _Catalog,
    queries: pd.DataFrame,
    intent: pd.DataFrame,
    judged_rows: list[np.ndarray],
    judged_grades: list[np.ndarray],
    pref_leaves: np.ndarray,
    pref_brands: np.ndarray,
    bands: np.ndarray,
) -> pd.DataFrame:
    n_users, n_sessions = len(pref_leaves), scale.sessions
    # Every user gets at least one session, active users many more (lognormal activity),
    # so most users have history before their later sessions.
    activity = rng.lognormal(0.0, 0.8, size=n_users)
    if n_sessions >= n_users:
        per_user = 1 + rng.multinomial(n_sessions - n_users, activity / activity.sum())
        user = np.repeat(np.arange(n_users), per_user)
    else:
        user = np.sort(rng.choice(n_users, size=n_sessions, replace=False))
    s = len(user)
    start = START_TIME + rng.integers(0, DAYS * 86_400, size=s)

    # Which leaf each session shops in: a preferred one 80% of the time.
    n_pref = (pref_leaves >= 0).sum(axis=1)
    pick = (rng.random(s) * n_pref[user]).astype(np.int64)
    leaf = pref_leaves[user, pick]
    explore = rng.random(s) < 0.2
    leaf[explore] = rng.integers(len(LEAVES), size=int(explore.sum()))
    q_leaf = intent["leaf"].to_numpy()
    q_index = rng.integers(len(queries), size=s)  # fallback: any query
    for i in range(len(LEAVES)):
        sessions = np.flatnonzero(leaf == i)
        options = np.flatnonzero(q_leaf == i)
        if len(sessions) and len(options):
            q_index[sessions] = rng.choice(options, size=len(sessions))
    by_shopper = np.lexsort((start, user))
    q_index = q_index[_missions(rng, user, by_shopper)]

    # Padded judged products per query, ranked by a noisy production ranker.
    width = max(len(r) for r in judged_rows)
    # int32/int8/float32 keep the (sessions x width) matrices small at "full" scale.
    prod = np.full((len(queries), width), -1, dtype=np.int32)
    grade = np.zeros((len(queries), width), dtype=np.int8)
    for qi, (rows, g) in enumerate(zip(judged_rows, judged_grades, strict=True)):
        prod[qi, : len(rows)] = rows
        grade[qi, : len(rows)] = g
    k = min(scale.impressions, width)
    sp, sg = prod[q_index], grade[q_index]
    score = sg + rng.standard_normal(size=sp.shape, dtype=np.float32)
    score[sp < 0] = -np.inf
    top = np.argpartition(-score, k - 1, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(score, top, axis=1), axis=1)
    top = np.take_along_axis(top, order, axis=1)
    shown = np.take_along_axis(sp, top, axis=1)  # (s, k) product rows, -1 = nothing
    shown_g = np.take_along_axis(sg, top, axis=1)
    position = np.broadcast_to(np.arange(k), shown.shape)

    valid = shown >= 0
    safe = np.where(valid, shown, 0)
    brand_match = (pref_brands[user][:, :, None] == cat.brand[safe][:, None, :]).any(axis=1)
    price_match = cat.band[safe] == bands[user][:, None]
    appeal = rng.lognormal(-0.5 * _APPEAL_SIGMA**2, _APPEAL_SIGMA, size=len(cat.leaf))[safe]
    preference = 1 + _BRAND_LOYALTY * brand_match + _PRICE_FIT * price_match
    attract = _ATTRACT[shown_g] * preference * appeal
    examine = (position + 1.0) ** -_EXAMINATION_DECAY
    p_cart = 0.04 + 0.08 * shown_g + 0.3 * brand_match + 0.2 * price_match
    p_buy = 0.3 + 0.3 * brand_match + 0.2 * price_match
    click, cart = _clicks_with_revisits(
        rng, user, by_shopper, shown, examine * attract, p_cart, _REVISIT, _REVISIT_CART
    )
    buy = cart & (rng.random(shown.shape) < p_buy)

    # Ids and splits follow session start order.
    by_time = np.argsort(start, kind="stable")
    rank = np.empty(s, dtype=np.int64)
    rank[by_time] = np.arange(s)
    session_id = rank + 1
    split = np.array(SPLITS)[(rank >= round(0.8 * s)).astype(int) + (rank >= round(0.9 * s))]
    t_click = start[:, None] + 4 + 3 * position + rng.exponential(15.0, size=shown.shape)
    t_cart = t_click + 10 + rng.exponential(40.0, size=shown.shape)
    t_buy = t_cart + 30 + rng.exponential(120.0, size=shown.shape)
    t_show = np.broadcast_to(start[:, None], shown.shape)

    product_ids = cat.frame["product_id"].to_numpy()
    query_ids = queries["query_id"].to_numpy()
    parts = []
    for type_rank, (mask, times) in enumerate(
        ((valid, t_show), (click, t_click), (cart, t_cart), (buy, t_buy))
    ):
        srow, col = np.nonzero(mask)
        parts.append((srow, col, np.full(len(srow), type_rank), times[srow, col].astype(np.int64)))
    srow, col, type_rank, ts = (np.concatenate(x) for x in zip(*parts, strict=True))
    order = np.lexsort((col, type_rank, ts, session_id[srow]))
    srow, col, type_rank, ts = srow[order], col[order], type_rank[order], ts[order]
    event_types = np.array(EVENT_TYPES, dtype=object)
    return pd.DataFrame(
        {
            "session_id": session_id[srow].astype(np.int64),
            "user_id": (user[srow] + 1).astype(np.int64),
            "query_id": query_ids[q_index[srow]].astype(np.int64),
            "timestamp": ts,
            "event_type": event_types[type_rank],
            "product_id": product_ids[shown[srow, col]].astype(np.int64),
            "position": col.astype(np.int64),
            "split": split[srow],
        }
    )


def _clicks_with_revisits(
    rng: np.random.Generator,
    user: np.ndarray,
    by_shopper: np.ndarray,
    shown: np.ndarray,
    p_click: np.ndarray,
    p_cart: np.ndarray,
    revisit: float,
    revisit_cart: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Click and add-to-cart masks (S, K), walking the sessions in `by_shopper` order (each
    shopper's sessions in time order) so
    that a product they clicked before is `1 + revisit` times as likely to be clicked
    (capped at 0.95) and `revisit_cart` more likely to be carted."""
    u_click, u_cart = rng.random(shown.shape), rng.random(shown.shape)
    click = np.zeros(shown.shape, dtype=bool)
    cart = np.zeros(shown.shape, dtype=bool)
    clicked_before: set[int] = set()
    previous_user = -1
    for j in by_shopper:
        if user[j] != previous_user:
            clicked_before, previous_user = set(), user[j]
        seen = np.array([int(p) in clicked_before for p in shown[j]])
        pc = np.minimum(p_click[j] * (1 + revisit * seen), 0.95)
        click[j] = (shown[j] >= 0) & (u_click[j] < pc)
        cart[j] = click[j] & (u_cart[j] < p_cart[j] + revisit_cart * seen)
        clicked_before.update(int(p) for p in shown[j][click[j]])
    return click, cart


def _resolve(scale: str | Scale) -> Scale:
    if isinstance(scale, Scale):
        return scale
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose from {sorted(SCALES)}")
    return SCALES[scale]


def generate_with_intents(
    scale: str | Scale = "demo", seed: int = 0, *, progress: bool = False
) -> tuple[ShopData, pd.DataFrame]:
    """`generate`, plus each query's intent in catalog terms.

    The intent frame has query_id, category (leaf path), color, material, brand, size;
    "" means the query did not state that attribute. Judgements are a function of it.
    """
    sc = _resolve(scale)
    rng = np.random.default_rng(seed)
    popularity = rng.lognormal(0.0, 0.5, size=len(LEAVES))
    popularity /= popularity.sum()
    # Model numbers and lexical queries come from a generator of their own, so the rest of
    # the shop is what it was for the same seed before they existed.
    lexical = np.random.default_rng([seed, 1])
    cat = _make_catalog(rng, sc, popularity, lexical)
    queries, intent = _make_queries(rng, sc, cat, popularity, lexical)
    judgements, judged_rows, judged_grades = _judge(rng, sc, cat, intent, progress)
    users, pref_leaves, pref_brands, bands = _make_users(rng, sc, cat, popularity)
    events = _simulate_sessions(
        rng, sc, cat, queries, intent, judged_rows, judged_grades, pref_leaves, pref_brands, bands
    )
    data = ShopData(cat.frame, queries, judgements, users, events)
    validate(data)
    return data, _intent_strings(intent, cat)


def generate(scale: str | Scale = "demo", seed: int = 0, *, progress: bool = False) -> ShopData:
    """A synthetic shop at `scale` ("tiny", "demo", "full" or a `Scale`), seeded by `seed`.

    Same arguments, same tables. See `SCALES` for the sizes; "demo" takes well under a
    minute on two cores.
    """
    return generate_with_intents(scale, seed, progress=progress)[0]


def main(argv: list[str] | None = None) -> int:
    """CLI: generate a shop and write it where `contract.ArtifactPaths(out)` says."""
    parser = argparse.ArgumentParser(
        prog="python -m shoprank.training.synthetic", description=__doc__
    )
    parser.add_argument("--scale", default="demo", choices=sorted(SCALES))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("artifacts") / "demo")
    parser.add_argument("--sessions", type=int, default=None, help="override the session count")
    args = parser.parse_args(argv)
    sc = SCALES[args.scale]
    if args.sessions is not None:
        sc = replace(sc, sessions=args.sessions)
    began = time.perf_counter()
    data = generate(sc, args.seed, progress=sys.stderr.isatty())
    paths = ArtifactPaths(args.out)
    save(data, paths)
    print(
        f"{args.scale} seed={args.seed}: {data.summary()} -> {paths.data} "
        f"({time.perf_counter() - began:.1f}s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
