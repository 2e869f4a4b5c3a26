"""`make bench`: every benchmark under bench/, one after another."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def main() -> None:
    here = Path(__file__).parent
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name not in ("all",))
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        if hasattr(module, "main"):
            print(f"\n##### bench.{name}", flush=True)
            sys.argv = [f"bench.{name}"]
            module.main()


if __name__ == "__main__":
    main()
