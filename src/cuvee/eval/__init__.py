"""`cuvee eval`: the same prompts put to several models (stored ones or any OpenAI-compatible
endpoint), scored by suites from a registry, cached so a re-run is instant, reported as JSON or
one self-contained HTML file. A team needs numbers to know whether a fine-tune helped and how far
it is from the model it replaces."""
