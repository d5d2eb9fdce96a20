"""`cuvee serve` as a gateway: public model ids served by other OpenAI-compatible servers
("upstreams": a hosted API, vLLM, llama-server, another cuvee) beside the local engine, and
routes that send one public id to an ordered chain of targets, local or upstream, falling back
to the next target when one fails before anything reached the client.

- ``config``: upstreams and routes, from ``serve.yaml`` (``--config``) and ``--upstream``;
- ``upstream``: one request to one upstream (pass-through body, streamed or not), and the
  failures that allow a retry on the next target;
- ``router``: the chain, the retries, what the client gets when a stream breaks after tokens
  were sent (``finish_reason: "error"`` and an error object, never a normal-looking end), and
  which targets served the request (``cuvee.served_by``).

A server without upstreams and routes behaves exactly as before: nothing here runs."""
