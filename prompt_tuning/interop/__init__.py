"""Interchange with other libraries' delta formats (PEFT adapters: `interop.peft`)."""
