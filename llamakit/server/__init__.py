"""`llamakit serve`: an OpenAI-compatible HTTP server with continuous batching over parallel slots.

app.py (routes), schemas.py (request bodies), responses.py (response bodies), scheduler.py (slots and the
batching thread), metrics.py (/metrics), static/chat.html (the chat page at /), serve.py (startup, shutdown).
"""
