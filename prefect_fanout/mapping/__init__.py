"""Corpora: items, partitions, the map stage, the classifier, the tree reduce, the summary."""
