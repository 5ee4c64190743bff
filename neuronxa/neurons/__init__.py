"""Language neurons: identification from activation probabilities, tables of where they sit, deactivation, and
the anchors' published formats."""
