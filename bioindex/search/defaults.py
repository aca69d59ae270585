"""Identification defaults, in a module light enough for the CLI to import at start-up."""

# Chosen on the demo world's open-set run (benchmarks/identify.py): with the calibrated
# few-shot head, the threshold that keeps a species answer for >= 90% of queries of
# labelled species.
DEFAULT_MIN_CONFIDENCE = 0.5
DEFAULT_RADIUS_KM = 500.0
# A taxon never recorded near the find keeps a tenth of its probability: a strong hint, not
# a veto (records are incomplete, and a first record is exactly what a curator wants to see).
DEFAULT_OUTSIDE_WEIGHT = 0.1
