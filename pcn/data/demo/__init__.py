"""The embedded demo datasets and the real-format miniatures, written in the official layouts."""
