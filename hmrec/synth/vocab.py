"""Fixed vocabularies of the H&M schema: names, codes, price points, text pieces.

These are the names and codes a generated file can contain (as in the Kaggle
articles.csv); nothing here is tuned. The style clusters that combine them are
in :mod:`hmrec.synth.world`, the tuning constants in :mod:`hmrec.synth.params`.
"""
from __future__ import annotations

import numpy as np

# Product codes have six digits (article_id = product_code * 1000 + variant),
# which bounds the catalogue, and with it the scale.
PRODUCT_CODE_RANGE = (108_775, 999_999)

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

# ---- text pieces for names and descriptions ----------------------------------

NAMES = (
    "Luna", "Tilly", "Jade", "Pluto", "Mika", "Ben", "Timmy", "Sirpa", "Bobby", "Nora", "Elton",
    "Harry", "Ivy", "Vera", "Maja", "Alva", "Saga", "Elsa", "Otto", "Leo", "Kim", "Dana", "Rosa",
    "Lulu", "Fiona", "Gigi", "Hanna", "Iris", "Juno", "Kaja", "Lily", "Mona", "Nova", "Olly",
    "Pia", "Quinn", "Ruby", "Stella", "Tove", "Uma", "Vilma", "Wanda", "Zoe", "Axel", "Bruno",
    "Carl", "Dennis", "Emil", "Felix", "Gustav", "Hugo", "Isak", "Jonas", "Karl", "Lucas",
)
MODIFIERS = ("", "", "", "HW ", "Slim ", "Oversized ", "2-pack ", "Basic ", "Soft ", "Relaxed ")
MATERIALS: dict[str, tuple[str, ...]] = {
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
FEATURES: dict[str, tuple[str, ...]] = {
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
FITS = ("Fitted", "Relaxed-fit", "Regular-fit", "Oversized", "Soft", "Classic", "Loose-fit")
