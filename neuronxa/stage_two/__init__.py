"""Stage two: alignment scores, baselines, retrieval, intervals and correlations from pooled states."""
