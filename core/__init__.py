"""The shared package: settings, domain, ports, engines, adapters and services.

Nothing here imports FastAPI or KServe; the router, the predictor and the functions
are inbound adapters over these services.
"""
