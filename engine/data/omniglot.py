"""Omniglot's background alphabets by character index, as data.

The shared ``images_background.npz`` stores characters by index only (index = upstream id - 1);
this table gives each index its alphabet and its upstream ``characterNN`` folder name. Ids come
in consecutive blocks per alphabet, and ``characterNN`` is id = first + NN - 1. Source: the table
in ``shared/data/omniglot/README.md`` (checked there against the two upstream small zips; the
tests check it again against them).
"""
from __future__ import annotations

BACKGROUND_CLASSES = 964
BACKGROUND_DRAWINGS = 20
BACKGROUND_SIZE = 105

# (first upstream id, last upstream id, alphabet), ids 1-based and inclusive, in id order.
BACKGROUND_ALPHABETS: list[tuple[int, int, str]] = [
    (1, 26, "Arcadian"),
    (27, 67, "Armenian"),
    (68, 107, "Asomtavruli_(Georgian)"),
    (108, 131, "Balinese"),
    (132, 177, "Bengali"),
    (178, 191, "Blackfoot_(Canadian_Aboriginal_Syllabics)"),
    (192, 217, "Braille"),
    (218, 250, "Cyrillic"),
    (251, 272, "Early_Aramaic"),
    (273, 295, "Syriac_(Estrangelo)"),
    (296, 324, "Anglo-Saxon_Futhorc"),
    (325, 350, "Futurama"),
    (351, 393, "Grantha"),
    (394, 417, "Greek"),
    (418, 465, "Gujarati"),
    (466, 487, "Hebrew"),
    (488, 539, "Japanese_(hiragana)"),
    (540, 555, "Inuktitut_(Canadian_Aboriginal_Syllabics)"),
    (556, 595, "Malay_(Jawi_-_Arabic)"),
    (596, 642, "Japanese_(katakana)"),
    (643, 682, "Korean"),
    (683, 708, "Latin"),
    (709, 728, "Alphabet_of_the_Magi"),
    (729, 769, "Mkhedruli_(Georgian)"),
    (770, 803, "Burmese_(Myanmar)"),
    (804, 836, "N_Ko"),
    (837, 850, "Ojibwe_(Canadian_Aboriginal_Syllabics)"),
    (851, 892, "Sanskrit"),
    (893, 909, "Tagalog"),
    (910, 964, "Tifinagh"),
]


def background_alphabets() -> list[str]:
    """The alphabet of each background character, by index (964 names; index = id - 1)."""
    return [name for first, last, name in BACKGROUND_ALPHABETS for _ in range(first, last + 1)]


def background_class_names() -> list[str]:
    """Upstream folder of each background character, by index: ``Arcadian/character01``, ..."""
    return [
        f"{name}/character{uid - first + 1:02d}"
        for first, last, name in BACKGROUND_ALPHABETS
        for uid in range(first, last + 1)
    ]
