"""The jobs the command line runs, one module each, and the steps they share (corpus, stage one, tracking, plots)."""
