"""Knative functions over the shared services.

    render/            renders a task: `render.requested` and `render.submit` events
    webhook/           delivers a task's signed callback: `task.<status>` events
    jetstream_source/  the ContainerSource that pulls JetStream and POSTs each message,
                       as a binary CloudEvent, to its function (K_SINK)

Each function is a thin func-python project; the logic lives in core/services.
"""
