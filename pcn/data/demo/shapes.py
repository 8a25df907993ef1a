"""The demo data's shape vocabulary and the class names and wnids drawn from it: one source
for the generator and for the params schema's limit on ``data.demo.n_classes`` (this module
imports nothing heavy)."""

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


def class_names(n_classes: int) -> list[str]:
    """Class names of the first ``n_classes`` shapes, in class-index order (sorted, as
    ImageFolder assigns them)."""
    return sorted(SHAPES[:n_classes])


def wnids(n_classes: int) -> list[str]:
    """Made-up WordNet ids of the classes, in class-index order.

    ``n9`` + the shape's rank among all :data:`SHAPES` sorted + 5 digits derived from
    its name: sorting the wnids of any ``n_classes`` keeps the order of
    :func:`class_names`, so the class indices of the ImageNet layout (rank of
    the sorted wnids) are the demo's.
    """
    ranks = {name: r for r, name in enumerate(sorted(SHAPES))}
    out = []
    for name in class_names(n_classes):
        digits = int.from_bytes(name.encode("utf-8"), "big") % 100_000
        out.append(f"n9{ranks[name] + 1:02d}{digits:05d}")
    return out
