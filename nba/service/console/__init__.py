"""The web console (``/console`` on the HTTP port): marketers edit, preview and publish policy
sets; business users read what works; anyone signed in opens a customer's 360° view. Pages are
rendered on the server (Jinja2) over the same servicers the APIs call."""
