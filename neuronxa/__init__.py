"""NeuronXA: cross-lingual alignment of language models from their FFN neurons."""
