"""OpenAI's Batch API (`/v1/files`, `/v1/batches`): wire shapes, the JSONL check, the store, the runner, routes."""
