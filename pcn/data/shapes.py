"""The demo data's shape vocabulary: one source for the generator and for the params
schema's limit on ``data.demo.n_classes`` (this module imports nothing heavy)."""

# Shape vocabulary, in the order classes are taken for ``n_classes`` (the
# class *indices* are the positions in the alphabetically sorted names).
SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "crescent",
    "heart",
    "arrow",
    "diamond",
    "chevron",
    "hexagon",  # last: at low resolution the hardest to tell from a circle
)
