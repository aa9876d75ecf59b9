"""Distillation of a SAM teacher into a TraceNet student (teachers, prompt sampling, losses, engine, data)."""
