"""One module per wire protocol; each turns requests into InferenceEngine calls."""
