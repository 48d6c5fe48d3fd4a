//! `anneal serve`: REST + SSE + OpenAI-compatible API + the dashboard.
