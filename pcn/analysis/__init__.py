"""Analysis: statistics over seeds, attention maps and their localisation scores,
figures, and the paper-vs-reproduced report."""
