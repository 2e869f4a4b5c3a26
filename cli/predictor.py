"""`cosyvoice-api predictor`: the KServe model server wrapping one engine."""

from __future__ import annotations

import sys


def run(argv: list[str]) -> None:
    # KServe parses sys.argv when its model_server module is imported: hand it ours.
    sys.argv = ["cosyvoice-api predictor", *argv]
    from predictor.__main__ import main as predictor_main

    predictor_main()
