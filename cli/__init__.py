"""`cosyvoice-api`: the platform's command line, one module per command.

Server commands (`serve`, `predictor`, `function`, `jetstream-source`) start a process of
the platform; client commands (`say`, `voices`, `tasks`, `schedule`, under `cli.client`)
talk to a running API over HTTP. `cli.main` dispatches and imports only the command it
runs, so a client command never loads uvicorn, KServe or an engine.
"""
