"""``conduit serve``: Conduit behind the OpenAI API (FastAPI on uvicorn).

::

    app.py        the application factory, its routes and lifespan
    schemas.py    request bodies (OpenAI's chat completion, Conduit's feedback)
    responses.py  OpenAI-shaped answers
    errors.py     ApiError and OpenAI's error body for every 4xx/5xx
    auth.py       API keys: Bearer header, cached verification
    decider.py    in-process routing, micro-batched over concurrent requests
    recorder.py   the history rows of answered calls, written behind the response in batches
    service.py    one chat call: route, reserve budget, call, settle, record
    budget_lease.py  per-process leases on the keys' daily budgets (holds without a round trip)
    server.py     uvicorn's entry point
"""
