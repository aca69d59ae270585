"""Identification defaults, in a module light enough for the CLI to import at start-up."""

# Chosen on the demo world's open-set run (benchmarks/identify.py): with the calibrated
# few-shot head, the threshold that keeps a species answer for >= 90% of queries of
# labelled species.
DEFAULT_MIN_CONFIDENCE = 0.5
DEFAULT_RADIUS_KM = 500.0
# A taxon never recorded near the find keeps a tenth of its probability: a strong hint, not
# a veto (records are incomplete, and a first record is exactly what a curator wants to see).
DEFAULT_OUTSIDE_WEIGHT = 0.1
# --templates: "openai" is pybioclip's recipe for custom labels (each label in 80 prompts,
# averaged); "one" puts it in one, 80x fewer texts for a first run over a long list on a
# CPU, at some accuracy (CLIP's paper: the 80-prompt ensemble added 3.5 points on ImageNet).
TEMPLATE_CHOICES = ("openai", "one")
