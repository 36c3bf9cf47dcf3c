"""Real datasets lorakit builds from the assets it fetches at set-up (lorakit.assets), as ordinary data files.

rotten_tomatoes.py  Pang & Lee's Rotten Tomatoes review snippets, split by movie into train / validation / test
"""

from lorakit.corpora.rotten_tomatoes import rotten_tomatoes_splits

__all__ = ["rotten_tomatoes_splits"]
