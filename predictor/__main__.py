"""`cosyvoice-api predictor`: one synthesis engine as a KServe model server.

    cosyvoice-api predictor --model-name cosyvoice3 --engine auto --http_port 8080

Every flag of KServe's model server works as well (`--http_port`, `--grpc_port`,
`--enable_latency_logging`, ...). The rest of the configuration comes from the same
environment as the API (`core.settings`): `BLOB_STORE_URL` (shared with the router, so
stored samples are read by key and extracted voice features persist across scale-to-zero),
`SYNTHESIS_CONCURRENCY`, `SYNTHESIS_TIMEOUT`, `FEATURE_CACHE_SIZE`, `MODEL_DIR_V3` /
`MODEL_DIR`, `COSYVOICE_FP16`, `COSYVOICE_TRT`, `COSYVOICE_VLLM`...

`kserve.model_server` parses `sys.argv` when it is imported, so it is imported here, in
`main`, and nowhere else.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import warnings

from core.domain import EngineSlot
from core.settings import EngineChoice

PROG = "cosyvoice-api predictor"


def _parser(kserve_parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve a CosyVoice engine as a KServe model (V1 protocol).",
        parents=[kserve_parser],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--model-name",
        dest="model_name",
        help="Name on the endpoint path: /v1/models/<name>:predict (same as --model_name).",
    )
    parser.add_argument(
        "--engine",
        choices=[choice.value for choice in EngineChoice],
        default=None,
        help="auto = CosyVoice when its code and weights are present, else espeak; "
        "unset = $ENGINE.",
    )
    parser.add_argument(
        "--slot",
        choices=[slot.value for slot in EngineSlot],
        default=None,
        help="Model family: v3 = CosyVoice3, v2 = CosyVoice2; unset = from the model name.",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="Syntheses run at once (the GPU's slots); unset = $SYNTHESIS_CONCURRENCY.",
    )
    # The model serves KServe's REST protocol only; gRPC stays off unless asked for.
    parser.set_defaults(model_name="cosyvoice3", enable_grpc=False)
    return parser


def slot_for(model_name: str) -> EngineSlot:
    return EngineSlot.v2 if "cosyvoice2" in model_name.lower() else EngineSlot.v3


def main() -> None:
    # KServe answers with a response class FastAPI now deprecates: a warning per process
    # that says nothing to whoever runs the predictor.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")
    from kserve import model_server
    from kserve.model_repository import ModelRepository

    from core.adapters.embedded.inprocess_synthesis import InProcessSynthesis
    from core.engines.features import FeatureCache
    from core.engines.registry import build_engine
    from core.engines.runner import EngineRunner
    from core.errors import EngineNotReady
    from core.memory_release import release_large_blocks_when_freed
    from core.settings import load_settings
    from core.wiring import build_blob_store

    from .model import SynthesisModel
    from .server import install

    args = _parser(model_server.parser).parse_args(sys.argv[1:])
    if args.workers != 1:
        raise SystemExit(f"{PROG}: --workers must be 1 (the engine lives in this process)")
    overrides: dict[str, object] = {}
    if args.engine:
        overrides["engine"] = args.engine
    if args.concurrency is not None:
        overrides["synthesis_concurrency"] = args.concurrency
    settings = load_settings(**overrides)
    # KServe configures its own and uvicorn's loggers; this covers the platform's.
    logging.basicConfig(
        level=("debug" if settings.debug else settings.log_level).upper(),
        format="%(asctime)s %(process)s %(name)s %(levelname)s %(message)s",
    )
    slot = EngineSlot(args.slot) if args.slot else slot_for(args.model_name)

    try:
        engine, warning = build_engine(settings, slot)
    except EngineNotReady as exc:
        raise SystemExit(f"{PROG}: {exc.detail}") from None
    release_large_blocks_when_freed([engine.info.engine])
    blobs = build_blob_store(settings)
    runner = EngineRunner(
        engine,
        concurrency=settings.synthesis_concurrency,
        timeout=settings.synthesis_timeout,
        feature_cache=FeatureCache(engine, engine.info.model, blobs, settings.feature_cache_size),
        max_queued=settings.max_queued_syntheses,
    )
    model = SynthesisModel(
        args.model_name,
        InProcessSynthesis(runner, blobs),
        blobs=blobs,
        max_text_length=settings.max_text_length,
        warning=warning,
    )
    model.enable_latency_logging = args.enable_latency_logging
    install(model_server.app, model)

    repository = ModelRepository()
    # Registered before it is ready: probes see the model (not ready) while it loads.
    repository.update(model)
    server = model_server.ModelServer(
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        workers=1,
        enable_grpc=args.enable_grpc,
        enable_docs_url=args.enable_docs_url,
        enable_latency_logging=args.enable_latency_logging,
        access_log_format=args.access_log_format,
        event_loop=args.event_loop,
        timeout_keep_alive=args.timeout_keep_alive,
        registered_models=repository,
    )
    _apply_event_loop(args.event_loop)
    server.start([])


def _apply_event_loop(choice: str) -> None:
    """Honour KServe's `--event-loop`: its server runs uvicorn inside `asyncio.run()`,
    where uvicorn's own loop selection never happens, so uvloop is installed here."""
    if choice == "asyncio":
        return
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit(f"{PROG}: --event-loop uvloop, but uvloop is not installed") from None
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # KServe asks for the current loop before it calls asyncio.run(); give it one.
    asyncio.set_event_loop(asyncio.new_event_loop())


if __name__ == "__main__":
    main()
