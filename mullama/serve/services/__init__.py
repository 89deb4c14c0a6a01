"""What the HTTP API does, without HTTP: the served model, the catalog, uploads, similar tracks, music and chat.

Services refuse a request by raising a `RequestError` kind (errors.py); only mullama/serve/openai_errors.py knows
which HTTP status and OpenAI error type each kind becomes.
"""
