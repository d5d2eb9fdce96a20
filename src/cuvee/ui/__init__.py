"""The web UI's static files (``static/``), served by ``cuvee serve`` at ``/ui``
(:mod:`cuvee.serve.ui`). Plain HTML, CSS and JavaScript modules, written to be read: no build
step, no framework, nothing loaded from another host."""
