"""The crdtkit command-line application: ``crdtkit demo | check | inspect``."""
