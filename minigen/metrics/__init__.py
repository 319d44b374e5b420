"""Evaluation: likelihood bookkeeping and sample quality in a reference classifier's features.

    likelihood.py      nats <-> bits/dim, dequantized bits/dim, logmeanexp (importance-weighted bounds)
    sample_quality.py  FLD (Fréchet distance), KID, precision/recall, classifier score,
                       conditional accuracy, nearest-neighbour (memorisation) distance
    classifier.py      the LeNet whose features those use, trained with minigen and cached
"""
from .likelihood import *  # noqa: F401,F403
from .sample_quality import *  # noqa: F401,F403
