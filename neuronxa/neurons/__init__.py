"""Language neurons: identification from activation probabilities, deactivation, the anchors' published formats."""
