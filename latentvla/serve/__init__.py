"""Policy server (`latentvla serve`) and its client: websocket + msgpack numpy (docs/evaluation.md)."""
