"""The command-line client: `say`, `voices`, `tasks` and `schedule` over the HTTP API.

It needs httpx, rich and pydantic-settings, and of this project only `core.domain`'s enums
(so its choices follow the API's); nothing of the router, engines or adapters. It works
against any deployment of the API (a laptop, a cluster behind an ingress).
"""
