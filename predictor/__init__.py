"""The KServe predictor: a synthesis engine served as a KServe model (see `__main__`)."""
