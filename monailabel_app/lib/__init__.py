"""Building blocks of the MONAI Label explain app: networks, transforms and infer tasks."""
